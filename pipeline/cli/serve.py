"""``freshet serve``: run one inference replica until Ctrl-C or SIGTERM.

Reads ``kind``, ``features``, ``model`` and ``serve`` from the config file
(:mod:`configs.serving`), bootstraps from the newest snapshot in ``serve.snapshot_dir``,
follows the delta topic and answers HTTP on ``serve.host:serve.port``. Prints the base URL on
stdout (one line) once listening; logs go to stderr. Exit codes: 0 after Ctrl-C or SIGTERM,
1 on a runtime failure (port taken, ...), 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``freshet serve``'s options."""
    parser.add_argument("--config", required=True, help="YAML with kind, features, model, serve")
    parser.add_argument("--host", default=None, help="override serve.host")
    parser.add_argument("--port", type=int, default=None, help="override serve.port (0: free)")
    parser.add_argument("--data-dir", default=None, help="override serve.data_dir")
    parser.add_argument("--snapshot-dir", default=None, help="override serve.snapshot_dir")
    parser.add_argument(
        "--bootstrap", default=None, help="override serve.bootstrap_servers (host:port[,...])"
    )
    parser.add_argument("--topic", default=None, help="override serve.topic")
    parser.add_argument("--name", default=None, help="override serve.name")


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in ("host", "port", "data_dir", "snapshot_dir", "topic", "name"):
        value = getattr(args, key)
        if value is not None:
            out[key] = value
    if args.bootstrap is not None:
        out["bootstrap_servers"] = [s for s in args.bootstrap.split(",") if s]
    return out


def run(args: argparse.Namespace) -> int:
    """Start the replica and its HTTP server; wait for Ctrl-C or SIGTERM."""
    from pydantic import ValidationError

    from configs.serving import ServeConfig, ServeFile
    from pipeline.cli.embed_serve import service_rows
    from pipeline.publishing.errors import ServingError
    from pipeline.serving.http import ReplicaHttpServer
    from pipeline.serving.model import Blueprint
    from pipeline.serving.replica import Replica

    try:
        cfg = ServeFile.from_yaml(args.config)
        serve = ServeConfig.model_validate({**cfg.serve.model_dump(), **_overrides(args)})
        signer = serve.signing.signer()
        rows = service_rows(serve.embedding_service, cfg.features.to_spec(), cfg.model.to_spec())
        blueprint = Blueprint(
            cfg.features.to_spec(),
            cfg.model.to_spec(),
            num_shards=serve.num_shards,
            dram_budget_bytes=serve.dram_budget_bytes,
            rows=rows,
        )
    except (ValidationError, ServingError, ValueError) as err:
        print(f"freshet serve: configuration error: {err}", file=sys.stderr)
        return 2
    replica = Replica(
        blueprint, serve.replica_settings(), serve.bootstrap, name=serve.name, signer=signer
    )
    if rows is not None:
        rows.metrics.attach(replica.metrics.registry)  # lookups, cache hit ratio on /metrics
    server = ReplicaHttpServer(replica, cfg.kind, serve.http_settings())
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        replica.start()
        try:
            server.start()
        except OSError as err:
            print(
                f"freshet serve: cannot listen on {serve.host}:{serve.port}: {err}", file=sys.stderr
            )
            return 1
        print(server.url, flush=True)
        log.info(
            "replica %s serving on %s (signed deltas: %s); Ctrl-C stops it",
            serve.name,
            server.url,
            "required" if signer is not None else "no",
        )
        while not stop.wait(0.5):
            pass
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        log.info("stopping replica %s", serve.name)
        server.close()
        replica.close()
        signal.signal(signal.SIGTERM, previous)
