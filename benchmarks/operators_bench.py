"""``freshet bench operators``: training throughput with operators on schedule vs without.

The fraud job of ``configs/fraud.yaml`` (tiered store, 5% of rows in DRAM) trains the same
synthetic events from memory in alternating rounds: without operators, then with tier
migration and background incremental checkpoints every ``--every`` seconds (run between
steps, as in ``freshet train``). Target (issue 4): with operators >= 0.9x without.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options (``--quick``/``--out`` come from ``freshet bench``)."""
    parser.add_argument("--events", type=int, default=None, help="events per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode")
    parser.add_argument("--every", type=float, default=1.0, help="operator interval, seconds")


def _job(tmp: str, name: str, every: float | None) -> Any:
    from configs.job import JobConfig
    from pipeline.training.job import TrainJob
    from pipeline.training.job_operators import ScheduledOperators

    base = JobConfig.from_yaml(REPO / "configs" / "fraud.yaml")
    update: dict[str, Any] = {
        "store": base.store.model_copy(update={"path": f"{tmp}/{name}/store", "hot_rows": 1000}),
    }
    if every is not None:
        update["operators"] = {
            "checkpoint": {"dir": f"{tmp}/{name}/ckpt", "retention": 2},
            "schedules": [
                {
                    "operator": "incremental_checkpoint",
                    "trigger": {"type": "interval", "seconds": every},
                },
                {"operator": "tier_migration", "trigger": {"type": "interval", "seconds": every}},
            ],
        }
    raw = base.model_dump()
    raw.update(update)
    spec = JobConfig(**raw).to_spec()
    plugins = [ScheduledOperators(spec.operators)] if spec.operators.schedules else []
    return TrainJob(spec, plugins=plugins).open()


def _round(job: Any, events: list[Any], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(events), batch):
        job.trainer.train_batch(events[i : i + batch])
        for plugin in job.plugins:
            plugin.at_step(job, False)
    return len(events) / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> int:
    """Alternate rounds of both modes on the same events; write JSON."""
    from pipeline.events.generators import generate

    n = args.events or (20_000 if args.quick else 100_000)
    batch = 512
    out: dict[str, Any] = {
        "events_per_round": n,
        "batch": batch,
        "every_s": args.every,
        "load_avg_start": os.getloadavg()[0],
    }
    rates: dict[str, list[float]] = {"without": [], "with": []}
    reports = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            events = list(generate("transaction", n, 100 + r))
            for mode in ("without", "with"):
                job = _job(tmp, f"{mode}{r}", None if mode == "without" else args.every)
                rates[mode].append(_round(job, events, batch))
                if job.plugins and job.checkpoint_manager is not None:
                    job.checkpoint_manager.wait()  # a background write still in flight
                    reports += len(job.plugins[0].reports)
                job.close(clean=False)
    out["operator_runs_in_timed_rounds"] = reports
    out["samples_per_s"] = {k: statistics.median(v) for k, v in rates.items()}
    out["rounds"] = rates
    ratio = out["samples_per_s"]["with"] / out["samples_per_s"]["without"]
    out["ratio_with_to_without"] = ratio
    out["target_0.9_met"] = ratio >= 0.9
    out["load_avg_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.operators_bench``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer events")
    parser.add_argument("--out", required=True, help="JSON path")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
