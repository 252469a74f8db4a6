"""``freshet broker``: run the embedded dev broker until Ctrl-C.

Prints the bootstrap address on stdout (one line), logs to stderr, and keeps the broker's own
output in a log file. Exit codes: 0 after Ctrl-C or SIGTERM, 1 if the broker fails or dies.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from types import FrameType

from pipeline.broker.embedded import EmbeddedBroker, ensure_topics
from pipeline.errors import BrokerError

log = logging.getLogger(__name__)


def _topic_spec(text: str) -> tuple[str, int]:
    name, _, partitions = text.partition(":")
    try:
        count = int(partitions) if partitions else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME[:PARTITIONS], got {text!r}") from None
    if not name or count < 1:
        raise argparse.ArgumentTypeError(f"expected NAME[:PARTITIONS], got {text!r}")
    return name, count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``freshet broker``'s options."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument(
        "--topic",
        dest="topics",
        action="append",
        type=_topic_spec,
        default=[],
        metavar="NAME[:PARTITIONS]",
        help="create this topic at start (repeatable)",
    )
    parser.add_argument("--log-file", default=None, help="broker output (default: a temp file)")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Start the broker, print its bootstrap address and wait for Ctrl-C."""
    broker = EmbeddedBroker(host=args.host, port=args.port, log_path=args.log_file)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    # a shell starts background jobs with SIGINT ignored, and Python keeps that: Ctrl-C / kill
    # -INT must stop the broker however it was started
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        broker.start()
        if args.topics:
            ensure_topics(broker.bootstrap, dict(args.topics))
        print(broker.bootstrap, flush=True)
        log.info(
            "broker running at %s (log: %s); Ctrl-C stops it", broker.bootstrap, broker.log_path
        )
        while broker.running:
            time.sleep(0.5)
        log.error("the broker exited on its own; see %s", broker.log_path)
        return 1
    except BrokerError as err:
        print(f"freshet broker: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log.info("stopping the broker")
        return 0
    finally:
        broker.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
