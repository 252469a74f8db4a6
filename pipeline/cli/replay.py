r"""``freshet replay``: produce a file or a generated stream into a Kafka topic.

Examples::

    freshet replay --bootstrap-server 127.0.0.1:9092 --topic clicks \
        --file ../shared/data/criteo/train.txt
    freshet replay --bootstrap-server 127.0.0.1:9092 --topic tx --generator transaction \
        --max-messages 100000 --rate 5000 --key customer_id --partitions 4
    freshet replay --bootstrap-server 127.0.0.1:9092 --from-dlq tx.dlq   # once the cause is fixed
    freshet replay --bootstrap-server 127.0.0.1:9092 --topic clicks --file clicks.csv \
        --schema job.yaml

``--schema`` (a shipped schema's name, a schema YAML, or a job YAML with a ``schema:`` or
``kind:``) types CSV/TSV cells by their declared fields: strings stay strings.

``--from-dlq`` re-drives dead letters: each one's key, payload and original headers go back to
its source topic and partition (or to ``--topic``); see :mod:`pipeline.source.dead_letters`.

Option names follow Kafka's own tools (``--bootstrap-server``, ``--max-messages``); the older
``--bootstrap`` and ``--limit`` still work. Exit codes: 0 success, 1 the broker or the file
failed, 2 bad usage (an unknown generator, a missing file, a bad number).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs.schema import SHIPPED_SCHEMAS, load_schema
from pipeline.broker.embedded import ensure_topics
from pipeline.errors import ConfigError, PipelineError
from pipeline.events.formats import FileFormat, detect_format, read_messages, read_records
from pipeline.events.generators import KINDS, generate
from pipeline.events.replay import Message, keyed_by_field, keyed_by_index, replay
from pipeline.events.schema import EventSchema
from pipeline.source.dead_letters import redrive

DEFAULT_GENERATED = 100_000
"""Events a generator produces when ``--limit`` is not given."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``freshet replay``'s options."""
    parser.add_argument(
        "--bootstrap-server",
        "--bootstrap",
        dest="bootstrap",
        required=True,
        metavar="HOST:PORT",
        help="Kafka brokers, comma-separated",
    )
    parser.add_argument(
        "--topic",
        default=None,
        help="topic to produce to (required, except with --from-dlq: the source topics)",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--file", type=Path, help="file to replay (.gz ok)")
    what.add_argument("--generator", choices=KINDS, help="synthetic stream of this kind")
    what.add_argument(
        "--from-dlq", metavar="TOPIC", default=None, help="re-drive this dead-letter topic"
    )
    parser.add_argument(
        "--format",
        choices=[f.value for f in FileFormat],
        default=None,
        help="file format (default: from the extension)",
    )
    parser.add_argument(
        "--schema",
        default=None,
        metavar="NAME|FILE",
        help="type CSV/TSV cells by this schema (shipped name, schema YAML or job YAML)",
    )
    parser.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    parser.add_argument(
        "--max-messages",
        "--limit",
        dest="limit",
        type=int,
        default=None,
        metavar="N",
        help="stop after N events (default: the whole file; 100,000 generated)",
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument(
        "--key",
        default=None,
        metavar="FIELD|index",
        help="message key: a record field, or 'index' for the position (default: no key)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="create the topic with this many partitions if it does not exist",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _messages(args: argparse.Namespace) -> tuple[Iterable[Message], int | None]:
    key: str | None = args.key
    if args.generator is not None:
        n = args.limit if args.limit is not None else DEFAULT_GENERATED
        records: Iterator[dict[str, Any]] = generate(args.generator, n, args.seed)
        if key is None:
            return records, n
        if key == "index":
            return keyed_by_index(records), n
        return keyed_by_field(records, key), n
    fmt = FileFormat(args.format) if args.format else detect_format(args.file)
    schema = load_schema_arg(args.schema) if args.schema else None
    if key is None:
        return read_messages(args.file, fmt, schema), None
    if key == "index":
        return keyed_by_index(read_messages(args.file, fmt, schema)), None
    return keyed_by_field(read_records(args.file, fmt, schema), key), None


def load_schema_arg(value: str) -> EventSchema:
    """The schema named by ``--schema``: a shipped name, a schema YAML, or a job YAML.

    Raises :class:`~pipeline.errors.ConfigError` naming what could not be read.
    """
    try:
        if value in SHIPPED_SCHEMAS:
            return load_schema(value)
        with open(value, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
        if isinstance(raw, dict) and "fields" not in raw:  # a job file
            given = raw.get("schema", raw.get("kind"))
            if given is None:
                raise ConfigError("--schema", f"{value} has no schema: or kind: section")
            raw = given
        return load_schema(raw)
    except (OSError, yaml.YAMLError, ValidationError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        first = str(err).splitlines()
        detail = " ".join(first[:3]) if isinstance(err, ValidationError) else str(err)
        raise ConfigError("--schema", f"cannot read a schema from {value}: {detail}") from None


def _redrive(args: argparse.Namespace) -> int:
    try:
        report = redrive(args.bootstrap, args.from_dlq, topic=args.topic, limit=args.limit)
    except PipelineError as err:
        print(f"freshet replay: {err}", file=sys.stderr)
        return 1
    where = args.topic or "their source topics"
    print(
        f"{report.sent} dead letters re-driven to {where}; skipped: "
        f"{report.skipped_truncated} with a cut payload, "
        f"{report.skipped_not_dead_letters} not Freshet dead letters"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Replay the file or generator into the topic (or re-drive dead letters); print the count."""
    if args.limit is not None and args.limit < 0:
        print("freshet replay: --max-messages must be >= 0", file=sys.stderr)
        return 2
    if args.from_dlq is not None:
        return _redrive(args)
    if args.topic is None:
        print("freshet replay: --topic is required with --file or --generator", file=sys.stderr)
        return 2
    if args.file is not None and not args.file.is_file():
        print(f"freshet replay: no such file: {args.file}", file=sys.stderr)
        return 2
    if (args.rate is not None and args.rate <= 0) or (args.limit is not None and args.limit < 0):
        print("freshet replay: --rate must be > 0 and --max-messages >= 0", file=sys.stderr)
        return 2
    try:
        if args.partitions is not None:
            ensure_topics(args.bootstrap, {args.topic: args.partitions})
        messages, total = _messages(args)
        if args.limit is not None:
            messages = itertools.islice(messages, args.limit)
        count = replay(
            args.bootstrap,
            args.topic,
            messages,
            rate=args.rate,
            progress=not args.no_progress,
            total=total if total is not None else args.limit,
        )
    except ConfigError as err:
        print(f"freshet replay: {err}", file=sys.stderr)
        return 2
    except PipelineError as err:
        print(f"freshet replay: {err}", file=sys.stderr)
        return 1
    print(f"{count} events sent to {args.topic}")
    return 0
