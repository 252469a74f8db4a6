"""``freshet train --config FILE``: the main job, until stopped (SIGINT/SIGTERM) or done."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from dataclasses import asdict
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``freshet train``."""
    parser.add_argument("--config", required=True, help="job YAML (configs/fraud.yaml, ...)")
    parser.add_argument("--max-events", type=int, default=None, help="stop after N events")
    parser.add_argument(
        "--idle-timeout", type=float, default=None, help="stop after S seconds without events"
    )
    parser.add_argument(
        "--nproc", type=int, default=1, help="ranks on this machine (torch.distributed, gloo)"
    )


def run(args: argparse.Namespace) -> int:
    """Train until done; prints the summary as JSON. Exit 2 on a bad config."""
    from pydantic import ValidationError

    from configs.job import JobConfig
    from pipeline.train_job import Progress, TrainJob

    if args.nproc > 1:
        from pipeline.launch import launch

        extra: list[str] = []
        if args.max_events is not None:
            extra += ["--max-events", str(args.max_events)]
        if args.idle_timeout is not None:
            extra += ["--idle-timeout", str(args.idle_timeout)]
        return launch(args.config, args.nproc, extra)
    try:
        config = JobConfig.from_yaml(args.config)
    except (OSError, ValidationError, ValueError) as err:
        print(f"freshet train: invalid config {args.config}: {err}")
        return 2

    def show(p: Progress) -> None:
        log.info(
            "events=%d events/s=%.0f auc=%.4f window_auc=%.4f hit=%.3f dead_letters=%d",
            p.events,
            p.events_per_s,
            p.auc,
            p.window_auc,
            p.hit_ratio,
            p.dead_letters,
        )

    job = TrainJob(config, progress=show, progress_every_s=5.0)

    def stop(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        job.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with job:
        summary = job.run(max_events=args.max_events, idle_timeout_s=args.idle_timeout)
    out = {k: v for k, v in asdict(summary).items() if k != "history"}
    print(json.dumps(out, indent=2))
    return 0
