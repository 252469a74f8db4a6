"""``freshet embed-serve``: run one shard of the shared embedding service until Ctrl-C.

Each shard owns a tiered store of the ids that hash to it and answers batched lookups (any
reader) and batched updates (each table's owner) over Arrow Flight; clients route ids by
hash over ``--num-shards`` shards, listed in shard order. A restarted shard comes back from
its directory (store checkpoint + write-ahead log). Prints ``grpc://HOST:PORT`` once ready.

Re-sharding (M shards to M'): stop the service, then start each of the M' new shards on an
empty ``--path`` with ``--num-shards M' --reshard-from OLD_0 ... OLD_{M-1}``; each takes the
rows that route to it at the newest version every old shard holds (older versions stay
behind, so readers pinned to them must move on).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import replace
from types import FrameType
from typing import Any

from prometheus_client import start_http_server
from pydantic import ValidationError

from configs.embedservice import EmbeddingServiceConfig, EmbedServeConfig
from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.errors import EmbedServiceError, RemoteTableError
from pipeline.embedservice.metrics import ClientMetrics
from pipeline.embedservice.server import ShardServer
from pipeline.embedservice.settings import RemoteSpec
from pipeline.embedservice.shard import ServiceShard
from pipeline.embedservice.tables import ServiceRows, ServiceTable, publish_delta
from pipeline.features.spec import FeatureSpec
from pipeline.publishing.delta import ModelDelta
from pipeline.training.models import BatchLayout, ModelSpec, model_tables

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the flags (each one a field of ``configs.embedservice.EmbedServeConfig``)."""
    parser.add_argument("--path", help="the shard's directory (store, log, state)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="Flight port (default 8815; 0: a free one)")
    shard = parser.add_mutually_exclusive_group()
    shard.add_argument("--shard", type=int, help="this shard's index (default 0)")
    shard.add_argument(
        "--shard-from-hostname",
        action="store_true",
        help="the index is the trailing number of $HOSTNAME (a StatefulSet pod: name-<ordinal>)",
    )
    parser.add_argument("--num-shards", type=int, help="shards of the service (default 1)")
    parser.add_argument("--keep-versions", type=int, help="older versions readers may ask for")
    parser.add_argument("--checkpoint-every", type=int, help="updates between store flushes")
    parser.add_argument("--dram-budget-mb", type=float, help="DRAM tier of the shard's store")
    parser.add_argument("--metrics-port", type=int, help="serve /metrics here (default: off)")
    parser.add_argument("--metrics-addr", help="address /metrics listens on")
    parser.add_argument(
        "--reshard-from",
        nargs="+",
        metavar="DIR",
        help="first fill this (empty) shard from every shard directory of a stopped service "
        "with another --num-shards: the ids that route here, at the newest version all hold",
    )


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "path", "host", "port", "shard", "num_shards", "keep_versions", "checkpoint_every",
        "dram_budget_mb", "metrics_port", "metrics_addr",
    )  # fmt: skip
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "shard_from_hostname", False):
        out["shard"] = shard_from_hostname(os.environ.get("HOSTNAME") or socket.gethostname())
    return out


def shard_from_hostname(hostname: str) -> int:
    """The StatefulSet ordinal at the end of ``hostname``.

    >>> shard_from_hostname("freshet-embed-3")
    3
    >>> shard_from_hostname("embed")
    Traceback (most recent call last):
    ...
    ValueError: hostname 'embed' does not end in -<shard index>
    """
    _, _, tail = hostname.rpartition("-")
    if not tail.isdigit():
        raise ValueError(f"hostname {hostname!r} does not end in -<shard index>")
    return int(tail)


def service_rows(
    config: EmbeddingServiceConfig | None, features: FeatureSpec, model: ModelSpec
) -> ServiceRows | None:
    """A replica's rows from the service (``serve.embedding_service``), or ``None``."""
    if config is None:
        return None
    names = [t.name for t in model_tables(model, BatchLayout.from_spec(features))]
    tables = config.tables if config.tables is not None else names
    unknown = sorted(set(tables) - set(names))
    if unknown:
        raise ValueError(f"embedding_service.tables {unknown} are not model tables {names}")
    client = ServiceClient(list(config.endpoints), config.client_settings(), ClientMetrics())
    return ServiceRows(client, tables, config.cache_rows)


def remote_sources(
    remote: RemoteSpec, dims: Mapping[str, int] | None = None
) -> tuple[ServiceClient, dict[str, ServiceTable]]:
    """A job's frozen tables from its ``remote:`` section, for ``RoutedStore(store, ...)``.

    Each table is pinned: at its ``version``, else at the newest version every shard holds
    now, so the job reads the same rows however the owner publishes on. ``dims`` (model
    table -> width) is checked against the service's schema. The job builds its model over
    ``RoutedStore(store, sources)``; its own store holds the other tables only.
    """
    client = ServiceClient(list(remote.endpoints), remote.client)
    sources: dict[str, ServiceTable] = {}
    try:
        for read in remote.read:
            name = read.service_table
            schema = client.schema(name)
            want = (dims or {}).get(read.table)
            if want is not None and want != schema.dim:
                raise RemoteTableError(
                    f"remote table {read.table!r}: the service's {name!r} has width "
                    f"{schema.dim}, the model's table {want}"
                )
            version = read.version
            if version is None:
                version = min(newest for _, newest in client.versions(name))
            sources[read.table] = ServiceTable(client, name, version)
            log.info(
                "table %r: read frozen from the service's %r at v%d", read.table, name, version
            )
    except BaseException:
        client.close()
        raise
    return client, sources


def publish_owned(client: ServiceClient, remote: RemoteSpec, delta: ModelDelta) -> None:
    """Push a delta's rows of the tables the job owns (``mode: own``) before replicas get it."""
    owned = remote.owned_tables()
    renamed = tuple(replace(t, name=owned[t.name]) for t in delta.tables if t.name in owned)
    publish_delta(client, replace(delta, tables=renamed), remote.writer, owned.values())


def run(args: argparse.Namespace) -> int:
    """Serve one shard; 2 on a configuration error, 1 if it cannot start."""
    try:
        cfg = EmbedServeConfig.model_validate(_settings(args))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        print(f"freshet embed-serve: bad {where}: {first['msg']}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"freshet embed-serve: {err}", file=sys.stderr)
        return 2
    shard = ServiceShard(cfg.shard_settings())
    if getattr(args, "reshard_from", None):
        try:
            shard.open()
            versions = shard.reshard_from(args.reshard_from)
        except (OSError, EmbedServiceError) as err:
            shard.close()
            print(f"freshet embed-serve: cannot re-shard: {err}", file=sys.stderr)
            return 2
        print(
            f"freshet embed-serve: shard {cfg.shard}/{cfg.num_shards} re-sharded from "
            f"{len(args.reshard_from)} shard(s): "
            + ", ".join(f"{t} v{v} ({shard.rows(t)} rows)" for t, v in versions.items()),
            file=sys.stderr,
        )
    server = ShardServer(shard, cfg.host, cfg.port)
    try:
        server.start()
    except (OSError, EmbedServiceError) as err:
        print(f"freshet embed-serve: cannot start shard {cfg.shard}: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # pyarrow raises its own errors for a port in use
        print(f"freshet embed-serve: cannot start shard {cfg.shard}: {err}", file=sys.stderr)
        return 1
    if cfg.metrics_port is not None:
        start_http_server(cfg.metrics_port, cfg.metrics_addr, registry=server.metrics.registry)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _stop)
    print(f"grpc://{cfg.host}:{server.port}", flush=True)
    log.info("embedding service shard %d/%d on port %d", cfg.shard, cfg.num_shards, server.port)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0
