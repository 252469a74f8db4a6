"""``freshet bench pipeline``: events/s from Kafka through decode, features and training.

Both systems train the same CTR model (configs/ctr.yaml: 26 categorical + 13 numeric
fields, batches of ``--batch`` events) on the same synthetic events, in one run:

- store-only: the events are featurised and handed to the trainer from memory;
- pipeline: the events are replayed into the embedded Kafka broker and consumed by the
  main job (KafkaSource polling ahead, decode + validation, featurizer, trainer, prefetch).

The training thread's time is split into waiting for the next batch (poll and decode that
did not overlap), features, and train. Target: pipeline >= 0.8x store-only samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the pipeline benchmark (``--quick``/``--out`` come from ``freshet bench``)."""
    parser.add_argument("--events", type=int, default=None, help="events per system")
    parser.add_argument("--batch", type=int, default=4096, help="events per batch")


def _config(bootstrap: str, topic: str, store: str, batch: int) -> Any:
    from configs.job import JobConfig

    base = JobConfig.from_yaml(REPO / "configs" / "ctr.yaml")
    return base.model_copy(
        update={
            "source": base.source.model_copy(
                update={
                    "bootstrap_servers": [bootstrap],
                    "topic": topic,
                    "group_id": "bench",
                    "assignment": "manual",
                    "max_events": batch,
                    "max_wait_ms": 2000,
                }
            ),
            "store": base.store.model_copy(update={"path": store}),
        }
    )


def run(args: argparse.Namespace) -> int:
    """Run both systems and write the JSON and PNG."""
    from pipeline.broker import EmbeddedBroker, ensure_topics
    from pipeline.events import CtrEvent
    from pipeline.generators import generate
    from pipeline.replay import replay
    from pipeline.train_job import TrainJob

    n = args.events or (20_000 if args.quick else 100_000)
    events = list(generate("ctr", n, 5))
    models = [CtrEvent.from_record(e) for e in events]
    out: dict[str, Any] = {
        "events": n,
        "batch": args.batch,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_start": os.getloadavg()[0],
        },
    }
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, {"ctr": 1})
        replay(broker.bootstrap, "ctr", events, progress=False)
        # store-only: the same job's trainer, batches from memory
        job = TrainJob(_config(broker.bootstrap, "ctr", f"{tmp}/a", args.batch)).open()
        assert job.trainer is not None
        t0 = time.perf_counter()
        for i in range(0, n, args.batch):
            job.trainer.train_batch(models[i : i + args.batch])
        store_s = time.perf_counter() - t0
        tr = job.trainer
        out["store_only"] = {
            "samples_per_s": n / store_s,
            "seconds": store_s,
            "features_s": tr.featurize_seconds,
            "train_s": tr.seconds - tr.featurize_seconds,
        }
        job.close()
        # pipeline: from Kafka
        job = TrainJob(_config(broker.bootstrap, "ctr", f"{tmp}/b", args.batch)).open()
        summary = job.run(max_events=n, idle_timeout_s=30)
        tr = job.trainer
        assert tr is not None
        busy = tr.seconds
        out["pipeline"] = {
            "samples_per_s": summary.events / summary.seconds,
            "seconds": summary.seconds,
            "events": summary.events,
            "features_s": tr.featurize_seconds,
            "train_s": tr.seconds - tr.featurize_seconds,
            "wait_for_batch_s": max(0.0, summary.seconds - busy),
        }
        job.close()
    ratio = out["pipeline"]["samples_per_s"] / out["store_only"]["samples_per_s"]
    out["ratio_pipeline_to_store_only"] = ratio
    out["target_0.8_met"] = ratio >= 0.8
    out["machine"]["load_avg_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    _plot(out, Path(args.out).with_suffix(".png"))
    print(json.dumps(out, indent=2))
    return 0


def _plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = ["store_only", "pipeline"]
    parts = ["wait_for_batch_s", "features_s", "train_s"]
    bottom = [0.0, 0.0]
    for part in parts:
        vals = [out[n].get(part, 0.0) for n in names]
        ax.bar(names, vals, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("seconds on the training thread")
    ax.set_title(f"pipeline / store-only = {out['ratio_pipeline_to_store_only']:.2f}x")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.pipeline_bench``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer events")
    parser.add_argument("--out", required=True, help="JSON path (a PNG is written beside it)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
