"""``freshet bench quality``: prequential AUC and events/s, Freshet beside River, per stream.

Each stream of ``../shared/data`` is evaluated with its shipped config exactly as ``freshet
evaluate`` does it (same validator, featurizer, model, store and trainer). River's logistic
regression with Adagrad then learns the *same events and features*: the batches Freshet's
featurizer made, one event at a time (``predict_proba_one`` then ``learn_one``: test, then
train), the sparse ids as one-hot keys and the dense columns as they are.

::

    stream ──► validate ──► Featurizer (batches of source.max_events) ──► Batch
                                                   │                        │
                                  Freshet: OnlineTrainer.train_batch    River: per event
                                  (featurize + train timed)             (dict + predict + learn
                                                                         timed)

Targets (issue 16): AUC >= 0.70 on criteo-2k and >= 0.968 on the first 300k fraud events;
Freshet's AUC >= River's and its events/s >= 3x River's. Targets missed still exit 0; the JSON
says which were met. Needs the ``bench`` extra (``pip install -e .[bench]``: river).

    freshet bench quality --out bench-out/quality.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
STREAMS: dict[str, tuple[str, str, int | None, float]] = {
    # name: (config, file, events, AUC target)
    "criteo-2k": ("configs/ctr.yaml", "criteo/train.txt", None, 0.70),
    "fraud-300k": ("configs/fraud.yaml", "fraud/transactions.csv.gz", 300_000, 0.968),
}
QUICK_EVENTS = 30_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``freshet bench quality``."""
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data directory")
    parser.add_argument("--streams", default=",".join(STREAMS), help="comma-separated subset")
    parser.add_argument("--river-lr", type=float, default=0.1, help="River Adagrad step size")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="events per batch (default: the config's)"
    )


def _events(config: Any, path: Path, limit: int | None) -> tuple[list[Any], int]:
    from pipeline.cli.evaluate import messages
    from pipeline.events.fast_decode import FastDecoder

    decode = FastDecoder(config.event_kind, config.schema_spec())
    out: list[Any] = []
    dead = 0
    for message in messages(config, path):
        if limit is not None and len(out) + dead >= limit:
            break
        try:
            out.append(decode(message))
        except ValueError:
            dead += 1
    return out, dead


def _freshet(config: Any, events: list[Any], size: int) -> tuple[dict[str, Any], list[Any]]:
    """Train Freshet prequentially; return its figures and the batches its featurizer made."""
    import torch

    from embedding_store import EmbeddingStore, StoreConfig
    from pipeline.features.featurizer import Featurizer
    from pipeline.training.models import BatchLayout, build_model, model_tables
    from pipeline.training.prequential import PrequentialMetrics
    from pipeline.training.trainer import OnlineTrainer

    fspec, mspec = config.features.to_spec(), config.model.to_spec()
    layout = BatchLayout.from_spec(fspec)
    overrides = config.store.table_overrides()
    tables = tuple(replace(t, **overrides) for t in model_tables(mspec, layout))
    featurizer = Featurizer(fspec)
    batches = []
    with tempfile.TemporaryDirectory(prefix="freshet-quality-") as tmp:
        store_config = StoreConfig(
            tmp,
            tables,
            num_shards=config.store.num_shards,
            lfu_decay=config.store.lfu_decay,
            **config.store.rocks_options(),
        )
        with EmbeddingStore(store_config) as store:
            torch.manual_seed(mspec.seed)
            model = build_model(mspec, layout, store)
            metrics = PrequentialMetrics(window=config.training.auc_window)
            trainer = OnlineTrainer(
                model,
                store,
                featurizer,
                dense_optimizer=mspec.dense_optimizer.build(model.parameters()),
                metrics=metrics,
            )
            t0 = time.perf_counter()
            for start in range(0, len(events), size):
                batch = featurizer.transform(tuple(events[start : start + size]))
                batches.append(batch)
                trainer.train_batch(batch)
            wall = time.perf_counter() - t0
    return {
        "model": mspec.kind,
        "auc": metrics.auc(),
        "log_loss": metrics.log_loss(),
        "events": metrics.events,
        "seconds": wall,
        "events_per_second": metrics.events / wall if wall > 0 else math.nan,
    }, batches


def _river(batches: list[Any], lr: float) -> dict[str, Any]:
    """River's LogisticRegression + AdaGrad on the same features, event by event."""
    from river import linear_model, optim

    from pipeline.features.featurizer import JaggedIds
    from pipeline.training.prequential import PrequentialMetrics

    model = linear_model.LogisticRegression(optimizer=optim.AdaGrad(lr))
    metrics = PrequentialMetrics(window=10_000)
    elapsed = 0.0
    for b in batches:
        keys: list[list[str]] = [[] for _ in range(len(b))]
        for table, ids in b.sparse.items():  # one-hot keys, built outside the timed part
            if isinstance(ids, JaggedIds):
                for i, (o, n) in enumerate(zip(ids.offsets, ids.lengths, strict=True)):
                    keys[i].extend(f"{table}:{v}" for v in ids.values[o : o + n].tolist())
            else:
                for i, row in enumerate(ids.tolist()):
                    keys[i].extend(f"{table}:{j}:{v}" for j, v in enumerate(row))
        dense = b.dense.tolist()
        labels = b.labels.tolist()
        scores = np.empty(len(b), dtype=np.float64)
        t0 = time.perf_counter()
        for i in range(len(b)):
            x = dict.fromkeys(keys[i], 1.0)
            x.update(zip(b.dense_names, dense[i], strict=True))
            scores[i] = model.predict_proba_one(x).get(True, 0.5)
            model.learn_one(x, bool(labels[i]))
        elapsed += time.perf_counter() - t0
        metrics.update(scores, b.labels)
    return {
        "model": "river LogisticRegression(AdaGrad)",
        "lr": lr,
        "auc": metrics.auc(),
        "log_loss": metrics.log_loss(),
        "events": metrics.events,
        "seconds": elapsed,
        "events_per_second": metrics.events / elapsed if elapsed > 0 else math.nan,
    }


def run(args: argparse.Namespace) -> int:
    """Evaluate each stream; write the JSON and a PNG bar chart beside it."""
    import torch

    from configs.job import JobConfig

    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"streams": {}}
    for name in [s for s in args.streams.split(",") if s]:
        cfg_path, rel, limit, target = STREAMS[name]
        if args.quick and limit is not None:
            limit = min(limit, QUICK_EVENTS)
        config = JobConfig.from_yaml(REPO / cfg_path)
        events, dead = _events(config, args.data / rel, limit)
        size = args.batch_size or config.source.max_events
        freshet, batches = _freshet(config, events, size)
        river = _river(batches, args.river_lr)
        res = {
            "config": cfg_path,
            "file": rel,
            "events": len(events),
            "dead_letters": dead,
            "batch_size": size,
            "freshet": freshet,
            "river": river,
            "targets": {
                "auc": target,
                "auc_met": freshet["auc"] >= target,
                "auc_ge_river": freshet["auc"] >= river["auc"],
                "speed_ratio": freshet["events_per_second"] / river["events_per_second"],
                "speed_3x_met": freshet["events_per_second"] >= 3 * river["events_per_second"],
            },
        }
        out["streams"][name] = res
        print(
            f"{name}: Freshet {freshet['model']} AUC {freshet['auc']:.4f} "
            f"{freshet['events_per_second']:.0f} ev/s | River AUC {river['auc']:.4f} "
            f"{river['events_per_second']:.0f} ev/s | ratio "
            f"{res['targets']['speed_ratio']:.1f}x",
            flush=True,
        )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    _plot(out, path.with_suffix(".png"))
    return 0


def _plot(out: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["streams"])
    if not names:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(names))
    for k, who in enumerate(("freshet", "river")):
        auc = [out["streams"][n][who]["auc"] for n in names]
        eps = [out["streams"][n][who]["events_per_second"] for n in names]
        a1.bar(x + 0.4 * k, auc, 0.4, label=who)
        a2.bar(x + 0.4 * k, eps, 0.4, label=who)
    for ax, title in ((a1, "prequential AUC"), (a2, "events/s (featurize + learn)")):
        ax.set_xticks(x + 0.2, names)
        ax.set_title(title)
        ax.legend()
    a1.set_ylim(0.5, 1.0)
    a2.set_yscale("log")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
