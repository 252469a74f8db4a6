"""One rank of the job under torchrun (or ``freshet train --nproc N``): the same job, N times.

::

    torchrun --nproc-per-node N -m pipeline.cli.rank --config FILE [flags]

takes the job file and the flags of ``freshet train`` (``--max-events``, ``--idle-timeout``,
``--checkpoint-dir``, ``--checkpoint-every``), joins the world torchrun describes and runs
the one step loop (:mod:`pipeline.training.job`) with the plugins the file asks for
(:mod:`pipeline.cli.train`). Rank 0 prints the summary as JSON; exit 2 on a bad config.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import torch.distributed as dist

from pipeline.cli.train import add_arguments, run_rank
from pipeline.runtime.logging import setup_logging
from pipeline.training.world import World, init_from_env


def build_parser() -> argparse.ArgumentParser:
    """The options of one rank: ``freshet train``'s."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli.rank")
    add_arguments(parser)
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="logs")
    return parser


class RankFilter(logging.Filter):
    """Prefix every log message with the rank that wrote it."""

    def __init__(self, rank: str) -> None:
        super().__init__()
        self.prefix = f"rank {rank}: "

    def filter(self, record: logging.LogRecord) -> bool:
        """Prefix the message (once) and keep the record."""
        if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
            record.msg = self.prefix + record.msg
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run this rank; the exit status."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format)
    rank_filter = RankFilter(os.environ.get("RANK", "?"))
    for handler in logging.getLogger().handlers:
        handler.addFilter(rank_filter)
    backend = init_from_env()
    try:
        return run_rank(args, World.joined(), {"backend": backend})
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
