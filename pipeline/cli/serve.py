"""``freshet serve``: run one inference replica until Ctrl-C or SIGTERM.

Reads ``kind``, ``features``, ``model`` and ``serve`` from the config file
(:mod:`configs.serving`; ``FRESHET_*`` environment variables override it, the flags below
override both), connects to Kafka with ``serve.security`` (TLS / SASL), bootstraps from the
newest snapshot in ``serve.snapshot_dir`` that loads, follows the delta topic and answers
HTTP on ``serve.host:serve.port``. Prints the base URL on stdout (one line) once listening;
logs go to stderr. Exit codes: 0 after Ctrl-C or SIGTERM, 1 on a runtime failure (port
taken, ...), 2 on a configuration error (one line).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

import torch
from pydantic import ValidationError
from pydantic_settings import SettingsError

from configs.serving import ServeConfig, ServeFile
from pipeline.cli.embed_serve import service_rows
from pipeline.publishing.errors import ServingError
from pipeline.runtime.secrets import SecretError
from pipeline.serving.http import ReplicaHttpServer
from pipeline.serving.model import Blueprint
from pipeline.serving.replica import Replica

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``freshet serve``'s options."""
    parser.add_argument("--config", required=True, help="YAML with kind, features, model, serve")
    parser.add_argument("--host", default=None, help="override serve.host")
    parser.add_argument("--port", type=int, default=None, help="override serve.port (0: free)")
    parser.add_argument("--data-dir", default=None, help="override serve.data_dir")
    parser.add_argument("--snapshot-dir", default=None, help="override serve.snapshot_dir")
    parser.add_argument(
        "--bootstrap-server",
        "--bootstrap",
        dest="bootstrap",
        default=None,
        metavar="HOST:PORT",
        help="override serve.bootstrap_servers (comma-separated; --bootstrap is the old name)",
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


class ServeConfigError(Exception):
    """The serve configuration is unusable; the message is one line naming the problem."""


def build(args: argparse.Namespace) -> tuple[Replica, ServeConfig, str]:
    """The replica (not started), its resolved config and event kind; or ``ServeConfigError``.

    Reads the secrets the config names (signing key, Kafka password) now.
    """
    try:
        cfg = ServeFile.from_yaml(args.config)
        serve = ServeConfig.model_validate({**cfg.serve.model_dump(), **_overrides(args)})
        signer = serve.signing.signer()
        client_config = serve.client_config()
        rows = service_rows(serve.embedding_service, cfg.features.to_spec(), cfg.model.to_spec())
        blueprint = Blueprint(
            cfg.features.to_spec(),
            cfg.model.to_spec(),
            num_shards=serve.num_shards,
            dram_budget_bytes=serve.dram_budget_bytes,
            rows=rows,
        )
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
            for e in err.errors(include_url=False)
        )
        raise ServeConfigError(problems) from err
    except (SettingsError, SecretError, ServingError, ValueError) as err:
        raise ServeConfigError(str(err).replace("\n", " ")) from err
    replica = Replica(
        blueprint,
        serve.replica_settings(),
        serve.bootstrap,
        name=serve.name,
        signer=signer,
        client_config=client_config,
    )
    if rows is not None:
        rows.metrics.attach(replica.metrics.registry)  # lookups, cache hit ratio on /metrics
    return replica, serve, cfg.kind


def tune_process(serve: ServeConfig) -> None:
    """The replica process's interpreter switch interval and torch threads.

    The HTTP event loop, its scoring workers and the delta thread share one interpreter lock:
    a shorter switch interval bounds how long a request waits behind a delta being applied.
    The workers already score requests in parallel; a second torch thread per request only
    spins (it doubled the CPU per request of the thread-per-connection server, 2 cores).
    """
    sys.setswitchinterval(serve.gil_switch_interval_ms / 1000)
    if serve.torch_threads is not None:
        torch.set_num_threads(serve.torch_threads)


def run(args: argparse.Namespace) -> int:
    """Start the replica and its HTTP server; wait for Ctrl-C or SIGTERM."""
    try:
        replica, serve, kind = build(args)
    except ServeConfigError as err:
        print(f"freshet serve: configuration error: {err}", file=sys.stderr)
        return 2
    signer = replica.signer
    tune_process(serve)
    server = ReplicaHttpServer(replica, kind, serve.http_settings())
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
