"""``freshet bench batches``: events/s and the fixed cost of one batch, by batch size.

The training path (featurize + forward + backward + store step + metrics) of the shipped
Criteo config, with its DeepFM model and with a logistic one, at batch sizes 16, 64, 256 and
1024, in-process (``OnlineTrainer.train_batch`` on validated events) and, with ``--kafka``,
through the embedded broker (``TrainJob`` with ``decode_in: process``). A straight line
``seconds per batch = fixed + per_event * B`` is fitted to the in-process figures: ``fixed``
is the cost a batch pays whatever its size, the one that makes small batches slow.

Figures are both wall time and this process's CPU time (the source process's CPU is not in
the in-process path): on a shared machine the CPU figures are the steadier.

    freshet bench batches --out bench-out/batches.json [--quick] [--kafka]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CRITEO = REPO.parent / "shared" / "data" / "criteo" / "train.txt"
SIZES = (16, 64, 256, 1024)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``freshet bench batches``."""
    parser.add_argument("--kafka", action="store_true", help="also through the embedded broker")
    parser.add_argument("--events", type=int, default=8192, help="events per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")


def _config(kind: str) -> Any:
    from configs.features import ModelConfig
    from configs.job import JobConfig

    config = JobConfig.from_yaml(REPO / "configs" / "ctr.yaml")
    if kind == "logistic":
        model = ModelConfig(type="logistic", linear_optimizer={"kind": "ftrl", "lr": 0.05})
        config = config.model_copy(update={"model": model})
    return config


def _events(n: int) -> list[Any]:
    from pipeline.events.fast_decode import FastDecoder
    from pipeline.events.formats import read_messages

    decode = FastDecoder("ctr")
    base = [decode(m) for m in read_messages(CRITEO)]
    return [base[i % len(base)] for i in range(n)]  # repeated: rows get warm, as in a stream


def in_process(kind: str, events: list[Any], size: int) -> dict[str, float]:
    """Train ``events`` in batches of ``size``; wall and CPU seconds per batch (warm)."""
    from dataclasses import replace

    import torch

    from embedding_store import EmbeddingStore, StoreConfig
    from pipeline.features.featurizer import Featurizer
    from pipeline.training.models import BatchLayout, build_model, model_tables
    from pipeline.training.trainer import OnlineTrainer

    config = _config(kind)
    fspec, mspec = config.features.to_spec(), config.model.to_spec()
    layout = BatchLayout.from_spec(fspec)
    tables = tuple(
        replace(t, **config.store.table_overrides()) for t in model_tables(mspec, layout)
    )
    batches = [tuple(events[i : i + size]) for i in range(0, len(events) - size + 1, size)]
    warm = min(max(1, len(batches) // 10), len(batches) - 1)
    with tempfile.TemporaryDirectory(prefix="freshet-batches-") as tmp:
        store_config = StoreConfig(
            tmp, tables, num_shards=config.store.num_shards, **config.store.rocks_options()
        )
        with EmbeddingStore(store_config) as store:
            torch.manual_seed(mspec.seed)
            model = build_model(mspec, layout, store)
            trainer = OnlineTrainer(
                model,
                store,
                Featurizer(fspec),
                dense_optimizer=mspec.dense_optimizer.build(model.parameters()),
            )
            for b in batches[:warm]:
                trainer.train_batch(b)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for b in batches[warm:]:
                trainer.train_batch(b)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = len(batches) - warm
    return {
        "batches": n,
        "wall_ms_per_batch": wall / n * 1e3,
        "cpu_ms_per_batch": cpu / n * 1e3,
        "events_per_second": n * size / wall,
        "events_per_cpu_second": n * size / cpu,
    }


def through_kafka(kind: str, events: list[Any], size: int, bootstrap: str) -> dict[str, float]:
    """The same events from a fresh topic of the embedded broker, by ``TrainJob``."""
    import uuid

    import msgspec
    import torch

    from pipeline.broker.embedded import ensure_topics
    from pipeline.events.replay import replay
    from pipeline.training.job import TrainJob

    topic = f"batches-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: 1})
    payloads = ((None, msgspec.json.encode(e)) for e in events)  # FastDecoder's Structs
    replay(bootstrap, topic, payloads, progress=False)
    config = _config(kind)
    with tempfile.TemporaryDirectory(prefix="freshet-batches-kafka-") as tmp:
        src = config.source.model_copy(
            update={
                "bootstrap_servers": [bootstrap],
                "topic": topic,
                "group_id": topic,
                "max_events": size,
                "max_wait_ms": 1000,
                "session_timeout_ms": 6000,
            }
        )
        store = config.store.model_copy(update={"path": str(Path(tmp) / "store")})
        training = config.training.model_copy(update={"torch_threads": torch.get_num_threads()})
        update = {"source": src, "store": store, "training": training}
        job = TrainJob(config.model_copy(update=update).to_spec())
        with job:
            cpu0 = time.process_time()
            summary = job.run(max_events=len(events), idle_timeout_s=60)
            cpu = time.process_time() - cpu0
    return {
        "events": summary.events,
        "seconds": summary.seconds,
        "events_per_second": summary.events_per_s,
        "trainer_cpu_ms_per_batch": cpu / max(summary.batches, 1) * 1e3,
    }


def _fit(rows: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """``(fixed_ms, per_event_us)`` of a least-squares line through (size, ms per batch)."""
    sizes = np.array([r["batch_size"] for r in rows], dtype=np.float64)
    ms = np.array([r["in_process"][key] for r in rows], dtype=np.float64)
    slope, intercept = np.polyfit(sizes, ms, 1)
    return float(intercept), float(slope * 1e3)


def run(args: argparse.Namespace) -> int:
    """Measure every model and batch size; write the JSON and a PNG beside it."""
    import torch

    torch.set_num_threads(args.threads)
    n = 2048 if args.quick else args.events
    events = _events(max(n, 4 * max(SIZES)))
    out: dict[str, Any] = {"events": len(events), "models": {}}
    broker = None
    if args.kafka:
        from pipeline.broker.embedded import EmbeddedBroker

        broker = EmbeddedBroker().__enter__()
    try:
        for kind in ("logistic", "deepfm"):
            rows = []
            for size in SIZES:
                row: dict[str, Any] = {"batch_size": size}
                row["in_process"] = in_process(kind, events, size)
                if broker is not None:
                    row["kafka"] = through_kafka(kind, events, size, broker.bootstrap)
                rows.append(row)
                kafka = row.get("kafka", {}).get("events_per_second", float("nan"))
                print(
                    f"{kind:8s} B={size:5d}: in-process "
                    f"{row['in_process']['events_per_second']:8.0f} ev/s "
                    f"({row['in_process']['cpu_ms_per_batch']:.2f} ms CPU/batch); "
                    f"kafka {kafka:8.0f} ev/s",
                    flush=True,
                )
            fixed_cpu, per_event_cpu = _fit(rows, "cpu_ms_per_batch")
            fixed_wall, per_event_wall = _fit(rows, "wall_ms_per_batch")
            out["models"][kind] = {
                "rows": rows,
                "fixed_ms_cpu": fixed_cpu,
                "per_event_us_cpu": per_event_cpu,
                "fixed_ms_wall": fixed_wall,
                "per_event_us_wall": per_event_wall,
            }
            print(
                f"{kind:8s} fixed cost per batch: {fixed_cpu:.2f} ms CPU, {fixed_wall:.2f} ms "
                f"wall; per event {per_event_cpu:.1f} us CPU",
                flush=True,
            )
    finally:
        if broker is not None:
            broker.__exit__(None, None, None)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    _plot(out, path.with_suffix(".png"))
    return 0


def _plot(out: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, res in out["models"].items():
        sizes = [r["batch_size"] for r in res["rows"]]
        ax.plot(sizes, [r["in_process"]["events_per_second"] for r in res["rows"]], "o-",
                label=f"{kind} in-process")  # fmt: skip
        if "kafka" in res["rows"][0]:
            ax.plot(sizes, [r["kafka"]["events_per_second"] for r in res["rows"]], "s--",
                    label=f"{kind} through Kafka")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (events)")
    ax.set_ylabel("events/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
