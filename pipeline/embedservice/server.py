"""The Flight server of one service shard (``freshet embed-serve``).

Handlers translate between :mod:`~pipeline.embedservice.wire` and a
:class:`~pipeline.embedservice.shard.ServiceShard`; errors go back as Flight errors whose
``extra_info`` names the error (``VersionUnavailableError`` as *unavailable*, so clients
retry it; the rest as *server* errors).

>>> import tempfile, numpy as np
>>> from pipeline.embedservice.client import ServiceClient
>>> from pipeline.embedservice.shard import RowUpdate, ServiceShard, ShardSettings, TableSchema
>>> with tempfile.TemporaryDirectory() as d:
...     server = ShardServer(ServiceShard(ShardSettings(d)), port=0).start()
...     client = ServiceClient([f"127.0.0.1:{server.port}"])
...     client.register(TableSchema("users", 2, owner="ctr"))
...     ids = np.array([5], np.int64)
...     client.publish(RowUpdate("users", "ctr", 1, 0, ids, np.ones((1, 2), np.float32)))
...     got = client.lookup("users", np.array([5], np.int64))
...     client.close(); server.stop()
>>> got.version, got.emb.tolist()
(1, [[1.0, 1.0]])
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pyarrow as pa
from pyarrow import flight

from pipeline.embedservice import wire
from pipeline.embedservice.errors import EmbedServiceError, VersionUnavailableError
from pipeline.embedservice.metrics import ShardMetrics
from pipeline.embedservice.shard import RowUpdate, ServiceShard, TableSchema

log = logging.getLogger(__name__)


def _flight_error(err: Exception) -> flight.FlightError:
    info = wire.error_info(err)
    if isinstance(err, VersionUnavailableError):
        return flight.FlightUnavailableError(str(err), info)
    return flight.FlightServerError(str(err), info)


class _Service(flight.FlightServerBase):  # type: ignore[misc]
    def __init__(self, location: str, shard: ServiceShard, metrics: ShardMetrics) -> None:
        super().__init__(location)
        self.shard = shard
        self.metrics = metrics

    def _schema(self, table: str) -> TableSchema:
        for schema in self.shard.schemas():
            if schema.name == table:
                return schema
        self.shard.rows(table)  # raises UnknownServiceTableError
        raise AssertionError(table)

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.RecordBatchStream:
        t0 = time.perf_counter()
        try:
            header, ids = wire.parse_ticket(ticket.ticket)
            got = self.shard.lookup(
                header["table"], ids, header.get("version"), bool(header.get("unique"))
            )
        except (EmbedServiceError, ValueError, KeyError) as err:
            self.metrics.errors.labels(kind=type(err).__name__).inc()
            raise _flight_error(err) from err
        batch = wire.rows_batch(got.emb, got.found, got.version)
        self.metrics.observe_lookup(len(ids), time.perf_counter() - t0)
        return flight.RecordBatchStream(pa.Table.from_batches([batch]))

    def do_put(
        self, context: Any, descriptor: flight.FlightDescriptor, reader: Any, writer: Any
    ) -> None:
        try:
            header = json.loads(descriptor.command)
            name = header["table"]
            schema = self._schema(name)
            ids, emb, tombs = wire.parse_update(reader.read_all(), schema.dim)
            update = RowUpdate(
                name, header["writer"], int(header["version"]), header.get("base"), ids, emb, tombs
            )
            version = self.shard.apply(update)
        except (EmbedServiceError, ValueError, KeyError) as err:
            self.metrics.errors.labels(kind=type(err).__name__).inc()
            raise _flight_error(err) from err
        self.metrics.requests.labels(op="update").inc()
        self.metrics.rows.labels(op="update").inc(len(ids) + len(tombs))
        self.metrics.version.labels(table=name).set(version)
        self.metrics.table_rows.labels(table=name).set(self.shard.rows(name))
        writer.write(json.dumps({"version": version}).encode())

    def do_action(self, context: Any, action: flight.Action) -> Iterator[bytes]:
        kind = action.type
        body = action.body.to_pybytes() if action.body is not None else b""
        try:
            if kind == "tables":
                out: Any = [asdict(s) for s in self.shard.schemas()]
            elif kind == "versions":
                out = self.shard.versions()
            elif kind == "register":
                self.shard.register(TableSchema(**json.loads(body)))
                out = {"ok": True}
            elif kind == "rows":
                ask = json.loads(body)
                out = {"rows": self.shard.rows(ask["table"])}
                if ask.get("exact"):
                    out["stored"] = self.shard.stored_rows(ask["table"])
            elif kind == "health":
                out = {"shard": self.shard.settings.shard, "ok": True}
            else:
                raise EmbedServiceError(f"unknown action {kind!r}")
        except (EmbedServiceError, ValueError, KeyError, TypeError) as err:
            self.metrics.errors.labels(kind=type(err).__name__).inc()
            raise _flight_error(err) from err
        yield json.dumps(out).encode()

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return [
            ("tables", "served tables and their schemas"),
            ("versions", "table -> [oldest, newest] answerable version"),
            ("register", "serve a table: JSON TableSchema"),
            ("rows", "rows held of a table"),
            ("health", "liveness"),
        ]


class ShardServer:
    """Serves one :class:`ServiceShard` over Arrow Flight on ``host:port`` (0: a free port)."""

    def __init__(
        self,
        shard: ServiceShard,
        host: str = "127.0.0.1",
        port: int = 0,
        metrics: ShardMetrics | None = None,
    ) -> None:
        self.shard = shard
        self.host = host
        self.requested_port = port
        self.metrics = metrics if metrics is not None else ShardMetrics()
        self._server: _Service | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ShardServer:
        """Open the shard (replaying its log) and start answering in a background thread."""
        if self.shard._store is None:
            self.shard.open()
        self._server = _Service(
            f"grpc://{self.host}:{self.requested_port}", self.shard, self.metrics
        )
        for name, (_, newest) in self.shard.versions().items():
            self.metrics.version.labels(table=name).set(newest)
            self.metrics.table_rows.labels(table=name).set(self.shard.rows(name))
        self._thread = threading.Thread(target=self._server.serve, name="embed-serve", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The port listened on."""
        if self._server is None:
            raise EmbedServiceError("shard server is not started")
        return int(self._server.port)

    def wait(self) -> None:
        """Block until the server stops."""
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """Stop answering, then checkpoint and close the shard."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.shard.close()
