"""The ``freshet`` command line.

Each subcommand lives in its own module, named in :data:`COMMANDS`; only the module of the
command being run (or whose help is asked for) is imported, so ``freshet --help`` and
``freshet --version`` load neither torch nor pandas. Exit codes: 0 success, 1 runtime
failure, 2 usage or configuration error, 4 the Kafka broker could not be reached (one line
naming the servers; ``source.broker_wait_s`` bounds the wait).

>>> parse(["--log-level", "debug", "broker", "--port", "9092"]).port
9092
>>> build_parser().format_usage().split()[:3]
['usage:', 'freshet', '[-h]']
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from types import ModuleType
from typing import Any

__all__ = [
    "BROKER_UNREACHABLE",
    "COMMANDS",
    "CommandParser",
    "build_parser",
    "main",
    "parse",
    "version",
]

# subcommand -> (module, help); each module has ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipeline.cli.demo", "run the main job end to end on a built-in synthetic stream"),
    "store-demo": ("pipeline.cli.store_demo", "train a synthetic stream through the store alone"),
    "train": ("pipeline.cli.train", "train online from Kafka with a job config"),
    "evaluate": ("pipeline.cli.evaluate", "prequential AUC of a job config on a file, no broker"),
    "bench": ("benchmarks.cli", "run a benchmark (store, sweep, memory, ...)"),
    "broker": ("pipeline.cli.broker", "run the embedded dev Kafka broker until Ctrl-C"),
    "replay": ("pipeline.cli.replay", "produce a file or a generated stream into a Kafka topic"),
    "config": ("pipeline.cli.config", "validate job YAML files or print their JSON schema"),
    "inspect": ("pipeline.cli.inspect", "show a store directory's tables, rows and checkpoints"),
    "serve": ("pipeline.cli.serve", "run an inference replica: snapshots + deltas -> HTTP"),
    "checkpoint": ("pipeline.cli.checkpoint", "list, verify, restore or compact checkpoints"),
    "embed-serve": ("pipeline.cli.embed_serve", "run one shard of the shared embedding service"),
}

LOG_LEVELS = ("debug", "info", "warning", "error")
BROKER_UNREACHABLE = 4
"""Exit code when no bootstrap server of the Kafka cluster could be reached."""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show an option's default in its help, unless it is None/False or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or "(default" in text:
            return text
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that shows defaults in help, for every (sub)command it makes.

    Sub-parsers are made with the class of their parent, so nested commands
    (``freshet checkpoint list``) show their defaults too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a bare checkout)."""
    try:
        return metadata.version("freshet")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name][0])


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``, found without importing any command module."""
    first = CommandParser(prog="freshet", add_help=False)
    _add_global_options(first)
    first.add_argument("command", nargs="?")
    first.add_argument("rest", nargs=argparse.REMAINDER)
    try:
        known, _ = first.parse_known_args(argv)
    except SystemExit:  # a bad global option: the full parser reports it
        return None
    command: str | None = known.command
    return command if command in COMMANDS else None


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log line format"
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="lowest level logged"
    )


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the ``chosen`` subcommand's module is imported for its options.

    Every subcommand is listed (with its help line); the others get their options when chosen.
    """
    parser = CommandParser(prog="freshet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"freshet {version()}")
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _command_module(name).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (exits 2 with a usage line on bad usage, 0 after ``--help``)."""
    return build_parser(_chosen(argv)).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``freshet`` console script."""
    args = parse(sys.argv[1:] if argv is None else argv)  # imports one command module
    # process-wide tuning, before any thread starts: FRESHET_MALLOC_TUNING=0 keeps glibc's
    # defaults (imported here, not at the top: the store package loads torch)
    importlib.import_module("embedding_store.allocator").tune_allocator()
    runtime_logging = importlib.import_module("pipeline.runtime.logging")
    runtime_logging.setup_logging(args.log_format, getattr(logging, args.log_level.upper()))
    importlib.import_module("pipeline.runtime.gc_tuning").tune_gc()  # start-up is done
    errors = importlib.import_module("pipeline.errors")
    try:
        code: int = importlib.import_module(args._module).run(args)
    except errors.BrokerUnreachableError as err:
        print(f"freshet {args.command}: {err}", file=sys.stderr)
        return BROKER_UNREACHABLE
    return code


if __name__ == "__main__":
    sys.exit(main())
