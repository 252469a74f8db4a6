"""The ``freshet`` command line.

Each subcommand lives in its own module and registers itself here; ``freshet --help``
lists them. Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, help); each module has ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipeline.cli.demo", "run the main job end to end on a built-in synthetic stream"),
    "store-demo": ("pipeline.cli.store_demo", "train a synthetic stream through the store alone"),
    "train": ("pipeline.cli.train", "train online from Kafka with a job config"),
    "bench": ("benchmarks.cli", "run a benchmark (store, sweep, memory, ...)"),
    "broker": ("pipeline.cli.broker", "run the embedded dev Kafka broker until Ctrl-C"),
    "replay": ("pipeline.cli.replay", "produce a file or a generated stream into a Kafka topic"),
    "config": ("pipeline.cli.config", "validate job YAML files or print their JSON schema"),
    "inspect": ("pipeline.cli.inspect", "show a store directory's tables, rows and checkpoints"),
    "serve": ("pipeline.cli.serve", "run an inference replica: snapshots + deltas -> HTTP"),
    "checkpoint": ("pipeline.cli.checkpoint", "list, verify, restore or compact checkpoints"),
    "embed-serve": ("pipeline.cli.embed_serve", "run one shard of the shared embedding service"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="freshet", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log line format"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``freshet`` console script."""
    from embedding_store.allocator import tune_allocator
    from pipeline.runtime.gc_tuning import tune_gc
    from pipeline.runtime.logging import setup_logging

    tune_allocator()  # before any thread starts; FRESHET_MALLOC_TUNING=0 keeps glibc's defaults
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_format)
    tune_gc()  # start-up is done: every subcommand's module is imported
    mod = importlib.import_module(args._module)
    code: int = mod.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
