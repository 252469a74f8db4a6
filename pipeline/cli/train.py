"""``freshet train --config FILE``: the main job, until stopped (SIGINT/SIGTERM) or done."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import asdict
from typing import Any, Final

log = logging.getLogger(__name__)

DISK_FAILED: Final = 3
"""Exit code when RocksDB could not write and ``store.on_disk_error`` is ``stop``."""
DEAD_LETTERS: Final = 4
"""Exit code when a run read events but every one went to the dead-letter topic."""


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
    """Train until done; prints the summary as JSON.

    Exit codes: 0 done, 2 a bad config, 4 every event went to dead letters (the top
    reasons on stderr), 3 the store's disk failed with
    ``store.on_disk_error: stop`` (the message names the directory, the OS error and the
    checkpoint a restart resumes from).
    """
    from pipeline.cli.config import ConfigFileError, load_job
    from pipeline.errors import StoreDiskError
    from pipeline.training.job import Progress, TrainJob

    if args.nproc > 1:
        from pipeline.training.launch import launch

        extra: list[str] = []
        if args.max_events is not None:
            extra += ["--max-events", str(args.max_events)]
        if args.idle_timeout is not None:
            extra += ["--idle-timeout", str(args.idle_timeout)]
        return launch(args.config, args.nproc, extra)
    try:
        config = load_job(args.config)  # one line per problem, never a traceback
    except ConfigFileError as err:
        print(f"freshet train: invalid config {err}", file=sys.stderr)
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
    try:
        with job:
            summary = job.run(max_events=args.max_events, idle_timeout_s=args.idle_timeout)
    except StoreDiskError as err:
        print(f"freshet train: {err}", file=sys.stderr)
        return DISK_FAILED
    out = {k: v for k, v in asdict(summary).items() if k != "history"}
    print(json.dumps(out, indent=2))
    if summary.events == 0 and summary.dead_letters > 0:
        return _only_dead_letters(config, summary.dead_letters)
    return 0


def _only_dead_letters(config: Any, count: int) -> int:
    """Every event of the run was dead-lettered: say why (top reasons), exit ``DEAD_LETTERS``."""
    from pipeline.cli.dead_letters import summarise, top_reasons
    from pipeline.source.kafka import dead_letter_topic_for

    src = config.source
    topic = dead_letter_topic_for(src.topic, src.dead_letter_topic)
    reasons = top_reasons(src.bootstrap_servers, topic, count, src.security.client_config())
    print(
        f"freshet train: all {count} events went to the dead-letter topic {topic} (does the "
        f"stream match the schema?); top reasons: {summarise(reasons, count)}",
        file=sys.stderr,
    )
    return DEAD_LETTERS
