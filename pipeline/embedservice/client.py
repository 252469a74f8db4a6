"""The service client: routes ids to shards, agrees on one version, retries with a bound.

::

    lookup(table, ids, version=None)
      split ids by hash ──► shard 0: do_get(ids₀ @ v)   (in parallel)
                       └──► shard 1: do_get(ids₁ @ v)
      versions differ (a publication in flight)? ask the shards that are ahead for the
      oldest one seen: every shard keeps its last versions, so the answer is one version.
      a shard down or not there yet? back off and ask again, at most ``retries`` times,
      then raise ServiceUnavailableError with the reason; never a mixed or partial answer.

Publishing sends every shard its part of the update (an empty one too, so all shards move
to the same version); a shard that already has the version acknowledges it again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from pyarrow import flight

from pipeline.embedservice import routing, wire
from pipeline.embedservice.errors import (
    EmbedServiceError,
    NotOwnerError,
    ServiceUnavailableError,
    VersionGapError,
    VersionUnavailableError,
)
from pipeline.embedservice.metrics import ClientMetrics
from pipeline.embedservice.settings import ClientSettings
from pipeline.embedservice.shard import Lookup, RowUpdate, TableSchema

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
T = TypeVar("T")


class ShardError(EmbedServiceError):
    """A shard refused a request for a reason no retry can change (named by ``kind``)."""

    def __init__(self, shard: int, kind: str, message: str) -> None:
        self.shard, self.kind = shard, kind
        super().__init__(f"service shard {shard}: {message}")


class _Retry(Exception):
    """A shard could not answer now (down, restarting, version not there yet)."""

    def __init__(self, reason: str, version_error: VersionUnavailableError | None = None) -> None:
        super().__init__(reason)
        self.version_error = version_error


def _translate(shard: int, table: str, err: Exception) -> Exception:
    """The error to raise (or ``_Retry``) for a Flight or transport error."""
    info: dict[str, Any] = {}
    raw = getattr(err, "extra_info", None)
    if raw:
        try:
            info = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            info = {}
    kind = info.get("kind")
    if kind == "VersionUnavailableError":
        verr = VersionUnavailableError(
            table, shard, int(info["version"]), int(info["oldest"]), int(info["newest"])
        )
        return _Retry(str(verr), verr)
    if kind == "NotOwnerError":
        return NotOwnerError(info["table"], info["owner"], info["writer"])
    if kind == "VersionGapError":
        return VersionGapError(table, shard, int(info["have"]), int(info["base"]))
    if kind is not None:
        return ShardError(shard, str(kind), str(info.get("message", err)))
    return _Retry(f"shard {shard}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")


class ServiceClient:
    """A connection to the ``M`` shards of one embedding service (``host:port`` each)."""

    def __init__(
        self,
        endpoints: list[str],
        settings: ClientSettings | None = None,
        metrics: ClientMetrics | None = None,
    ) -> None:
        if not endpoints:
            raise EmbedServiceError("an embedding service needs at least one shard endpoint")
        self.endpoints = list(endpoints)
        self.settings = settings if settings is not None else ClientSettings()
        self.metrics = metrics if metrics is not None else ClientMetrics()
        self._conns: list[flight.FlightClient | None] = [None] * len(endpoints)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._schemas: dict[str, TableSchema] = {}
        self._call_options = flight.FlightCallOptions(timeout=self.settings.timeout_s)
        self._publish_options = flight.FlightCallOptions(timeout=self.settings.publish_timeout_s)
        self._service_rows = self.metrics.rows.labels(source="service")

    @property
    def num_shards(self) -> int:
        """Shards the ids are spread over."""
        return len(self.endpoints)

    def _conn(self, i: int) -> flight.FlightClient:
        with self._lock:
            conn = self._conns[i]
            if conn is None:
                conn = self._conns[i] = flight.connect(f"grpc://{self.endpoints[i]}")
            return conn

    def _drop(self, i: int) -> None:
        with self._lock:
            conn, self._conns[i] = self._conns[i], None
        if conn is not None:
            conn.close()

    def _options(self, publish: bool = False) -> flight.FlightCallOptions:
        return self._publish_options if publish else self._call_options

    def _call(self, i: int, table: str, fn: Callable[[flight.FlightClient], T]) -> T:
        """One call to shard ``i``; Flight errors become ``_Retry`` or the shard's error."""
        try:
            return fn(self._conn(i))
        except (flight.FlightError, pa.ArrowException, OSError) as err:
            out = _translate(i, table, err)
            if isinstance(out, _Retry) and out.version_error is None:
                self._drop(i)  # a fresh channel after a restart
            raise out from err

    def _map(self, fn: Callable[[int], T], shards: list[int]) -> dict[int, T | Exception]:
        def one(i: int) -> T | Exception:
            try:
                return fn(i)
            except (_Retry, EmbedServiceError) as err:
                return err

        if len(shards) <= 1:
            return {i: one(i) for i in shards}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_shards, thread_name_prefix="embed-client")
        # the first shard on this thread, the others on the pool: one thread hop fewer
        futures = [(i, self._pool.submit(one, i)) for i in shards[1:]]
        out = {shards[0]: one(shards[0])}
        out.update((i, f.result()) for i, f in futures)
        return out

    def _backoff(self, attempt: int) -> None:
        s = self.settings
        time.sleep(min(s.max_backoff_s, s.backoff_s * (2**attempt)))

    def _retrying(self, what: str, table: str, fn: Callable[[int], T]) -> list[T]:
        """``fn`` on every shard until each answered, within the retry bound."""
        todo = list(range(self.num_shards))
        done: dict[int, T] = {}
        reason = ""
        for attempt in range(self.settings.retries + 1):
            for i, out in self._map(fn, todo).items():
                if isinstance(out, _Retry):
                    reason = str(out)
                elif isinstance(out, Exception):
                    raise out
                else:
                    done[i] = out
            todo = [i for i in range(self.num_shards) if i not in done]
            if not todo:
                return [done[i] for i in range(self.num_shards)]
            self.metrics.retries.inc()
            self._backoff(attempt)
        self.metrics.failures.inc()
        raise ServiceUnavailableError(f"{what} of table {table!r}", reason)

    # -- control -------------------------------------------------------------
    def _action(self, i: int, kind: str, body: bytes = b"") -> Any:
        def run(conn: flight.FlightClient) -> Any:
            results = list(conn.do_action(flight.Action(kind, body), self._options()))
            return json.loads(results[0].body.to_pybytes())

        return self._call(i, "*", run)

    def register(self, schema: TableSchema) -> None:
        """Serve ``schema``'s table on every shard (idempotent; checks owner and shape)."""
        body = json.dumps(schema.__dict__).encode()
        self._retrying("register", schema.name, lambda i: self._action(i, "register", body))
        self._schemas[schema.name] = schema

    def schema(self, table: str) -> TableSchema:
        """The schema of a served table (asked once)."""
        if table not in self._schemas:
            for entries in self._retrying("tables", table, lambda i: self._action(i, "tables")):
                for entry in entries:
                    self._schemas.setdefault(entry["name"], TableSchema(**entry))
        if table not in self._schemas:
            raise ShardError(0, "UnknownServiceTableError", f"no table {table!r}")
        return self._schemas[table]

    def versions(self, table: str) -> list[tuple[int, int]]:
        """``(oldest, newest)`` answerable version of ``table`` on each shard."""
        out = self._retrying("versions", table, lambda i: self._action(i, "versions"))
        return [(int(v[table][0]), int(v[table][1])) for v in out]

    def rows(self, table: str, exact: bool = False) -> int:
        """Rows the service holds of ``table``, all shards together.

        ``exact`` counts the keys each shard's store holds (slow: for tests and audits)
        rather than the ids it knows.
        """
        body = json.dumps({"table": table, "exact": exact}).encode()
        out = self._retrying("rows", table, lambda i: self._action(i, "rows", body))
        return int(sum(o["stored" if exact else "rows"] for o in out))

    # -- updates -------------------------------------------------------------
    def publish(self, update: RowUpdate) -> None:
        """Take every shard of the update's table to its version (the owner's rows, deletes)."""
        table = update.table
        ids = np.ascontiguousarray(update.ids, np.int64)
        tombs = np.ascontiguousarray(update.tombstones, np.int64)
        emb = np.ascontiguousarray(update.emb, np.float32)
        if emb.ndim != 2:  # a flat block; (0, dim) stays as it is (-1 cannot size it)
            emb = emb.reshape(len(ids), self.schema(table).dim)
        up, down = routing.split(ids, self.num_shards), routing.split(tombs, self.num_shards)
        header = json.dumps(
            {
                "table": table,
                "writer": update.writer,
                "version": update.version,
                "base": update.base,
            }
        ).encode()

        def one(i: int) -> int:
            batch = wire.update_batch(ids[up[i]], emb[up[i]], tombs[down[i]])

            def put(conn: flight.FlightClient) -> int:
                desc = flight.FlightDescriptor.for_command(header)
                writer_, reader = conn.do_put(desc, batch.schema, self._options(publish=True))
                writer_.write_batch(batch)
                writer_.done_writing()
                ack = reader.read()
                writer_.close()
                return int(json.loads(ack.to_pybytes())["version"]) if ack is not None else -1

            return self._call(i, table, put)

        self._retrying(f"publish v{update.version}", table, one)

    # -- lookups -------------------------------------------------------------
    def _get(
        self, i: int, table: str, ids: I64, version: int | None, dim: int, *, unique: bool
    ) -> Lookup:
        ticket = flight.Ticket(wire.lookup_ticket(table, version, ids, unique))

        def get(conn: flight.FlightClient) -> Lookup:
            reader = conn.do_get(ticket, self._call_options)
            batches = []
            while True:  # a shard sends one batch: no Table, no concatenation
                try:
                    batches.append(reader.read_chunk().data)
                except StopIteration:
                    break
            reply = batches[0] if len(batches) == 1 else pa.Table.from_batches(batches)
            v, emb, found = wire.parse_rows(reply, dim)
            return Lookup(v, emb, found)

        return self._call(i, table, get)

    def lookup(
        self, table: str, ids: I64, version: int | None = None, unique: bool = False
    ) -> Lookup:
        """Rows of ``ids`` at ``version`` (``None``: the newest every shard agrees on).

        ``unique``: the caller vouches that no id is there twice (shards skip their dedup).
        """
        t0 = time.perf_counter()
        ids = np.ascontiguousarray(ids, np.int64)
        dim = self.schema(table).dim
        parts = routing.split(ids, self.num_shards)
        involved = [i for i in range(self.num_shards) if len(parts[i])] or [0]
        target = version
        got: dict[int, Lookup] = {}
        reason = ""
        for attempt in range(self.settings.retries + 1):
            todo = [i for i in involved if i not in got]
            answers = self._map(
                lambda i, v=target: self._get(i, table, ids[parts[i]], v, dim, unique=unique),  # type: ignore[misc]
                todo,
            )
            failed = False
            for i, out in answers.items():
                if isinstance(out, Lookup):
                    got[i] = out
                elif isinstance(out, _Retry):
                    failed, reason = True, str(out)
                    verr = out.version_error
                    if verr is not None and version is None and verr.version < verr.oldest:
                        target, got = None, {}  # the agreed version is gone there: start over
                else:
                    raise out
            seen = {g.version for g in got.values()}
            if len(seen) > 1:
                target = min(seen)  # a publication is in flight: read the version before it
                got = {i: g for i, g in got.items() if g.version == target}
                continue
            if not failed and len(got) == len(involved):
                break
            self.metrics.retries.inc()
            self._backoff(attempt)
        else:
            self.metrics.failures.inc()
            raise ServiceUnavailableError(f"lookup of {len(ids)} ids in {table!r}", reason)
        self._service_rows.inc(len(ids))
        if self.num_shards == 1:  # the reply is already in the caller's order
            self.metrics.latency.observe(time.perf_counter() - t0)
            return got[0]
        out_v = next(iter(got.values())).version
        emb = np.empty((len(ids), dim), np.float32)
        found = np.empty(len(ids), np.bool_)
        for i in involved:
            emb[parts[i]], found[parts[i]] = got[i].emb, got[i].found
        self.metrics.latency.observe(time.perf_counter() - t0)
        return Lookup(out_v, emb, found)

    def close(self) -> None:
        """Close every connection."""
        for i in range(self.num_shards):
            self._drop(i)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
