"""What travels between service clients and shards: Arrow batches, never per-row encoding.

::

    lookup   do_get   ticket = u32 header length | JSON {"table", "version"} | raw int64 ids
                      reply  = one batch: emb FixedSizeList<float32, dim>, found bool;
                               schema metadata {"version": "<v>"}
    update   do_put   descriptor = JSON {"table", "writer", "version", "base"}
                      batches = ids int64, emb FixedSizeList<float32, dim>, tombstone bool
    control  do_action "tables" | "versions" | "register" (JSON body) | "rows" | "checkpoint"

Errors carry ``{"kind", "message", ...}`` as the Flight error's ``extra_info`` so a client
raises the same :mod:`~pipeline.embedservice.errors` class the shard did.

>>> import numpy as np
>>> ticket = lookup_ticket("users", 3, np.array([1, 2], np.int64))
>>> header, ids = parse_ticket(ticket)
>>> header, ids.tolist()
({'table': 'users', 'version': 3}, [1, 2])
>>> batch = rows_batch(np.ones((2, 3), np.float32), np.array([True, False]), 7)
>>> v, emb, found = parse_rows(batch, 3)
>>> v, emb.shape, found.tolist()
(7, (2, 3), [True, False])
"""

from __future__ import annotations

import functools
import json
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
B = npt.NDArray[np.bool_]
_LEN = struct.Struct("<I")


def lookup_ticket(table: str, version: int | None, ids: I64, unique: bool = False) -> bytes:
    """The ticket of one lookup (``unique``: no id twice, the shard skips its dedup)."""
    ask: dict[str, Any] = {"table": table, "version": version}
    if unique:
        ask["unique"] = True
    header = json.dumps(ask).encode()
    return _LEN.pack(len(header)) + header + np.ascontiguousarray(ids, "<i8").tobytes()


def parse_ticket(ticket: bytes) -> tuple[dict[str, Any], I64]:
    """``(header, ids)`` of a lookup ticket (ids are a view, not a copy)."""
    (n,) = _LEN.unpack_from(ticket, 0)
    header = json.loads(ticket[4 : 4 + n])
    body = memoryview(ticket)[4 + n :]
    if len(body) % 8:
        raise ValueError(f"lookup ticket carries {len(body)} id bytes, not a multiple of 8")
    return header, np.frombuffer(body, dtype="<i8")


def _emb_array(emb: F32) -> pa.FixedSizeListArray:
    dim = emb.shape[1] if emb.ndim == 2 else 1
    flat = pa.array(np.ascontiguousarray(emb, np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def _emb_numpy(column: Any, dim: int) -> F32:
    if isinstance(column, pa.FixedSizeListArray):  # .values skips pyarrow.compute's flatten
        values = (
            column.values.slice(0, len(column) * dim) if column.offset == 0 else column.flatten()
        )
    else:
        values = column
    out: F32 = values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return out


@functools.lru_cache(maxsize=256)
def _rows_schema(dim: int, version: int) -> pa.Schema:
    return pa.schema(
        [("emb", pa.list_(pa.float32(), dim)), ("found", pa.bool_())],
        metadata={"version": str(version)},
    )


def rows_batch(emb: F32, found: B, version: int) -> pa.RecordBatch:
    """A lookup's reply (the schema is built once per width and version)."""
    schema = _rows_schema(int(emb.shape[1]), int(version))
    return pa.RecordBatch.from_arrays([_emb_array(emb), pa.array(found)], schema=schema)


def parse_rows(batch: pa.RecordBatch | pa.Table, dim: int) -> tuple[int, F32, B]:
    """``(version, emb, found)`` of a lookup's reply."""
    meta = batch.schema.metadata or {}
    version = int(meta[b"version"])
    emb_col = batch.column(0)
    found_col = batch.column(1)
    if isinstance(batch, pa.Table):  # a table of one batch: its chunks, no concatenation
        emb_col, found_col = _one_chunk(emb_col), _one_chunk(found_col)
    found: B = found_col.to_numpy(zero_copy_only=False)
    return version, _emb_numpy(emb_col, dim), found


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def update_schema(dim: int) -> pa.Schema:
    """The schema of an update's batches."""
    return pa.schema(
        [("ids", pa.int64()), ("emb", pa.list_(pa.float32(), dim)), ("tombstone", pa.bool_())]
    )


def update_batch(ids: I64, emb: F32, tombstones: I64) -> pa.RecordBatch:
    """Upserts and deletes of one shard in one batch (deleted rows carry zeros)."""
    dim = emb.shape[1]
    all_ids = np.concatenate([ids, tombstones]).astype(np.int64)
    all_emb = np.concatenate([emb, np.zeros((len(tombstones), dim), np.float32)])
    flags = np.concatenate([np.zeros(len(ids), np.bool_), np.ones(len(tombstones), np.bool_)])
    return pa.RecordBatch.from_arrays(
        [pa.array(all_ids), _emb_array(all_emb), pa.array(flags)], schema=update_schema(dim)
    )


def parse_update(table: pa.Table, dim: int) -> tuple[I64, F32, I64]:
    """``(ids, emb, tombstones)`` of an update."""
    table = table.combine_chunks()
    ids: I64 = table.column("ids").to_numpy()
    flags: B = table.column("tombstone").to_numpy(zero_copy_only=False)
    emb = _emb_numpy(table.column("emb").combine_chunks(), dim)
    return ids[~flags], emb[~flags], ids[flags]


def error_info(err: Exception) -> bytes:
    """The ``extra_info`` of the Flight error that carries ``err`` to the client."""
    info: dict[str, Any] = {"kind": type(err).__name__, "message": str(err)}
    for name in ("version", "oldest", "newest", "have", "base", "table", "owner", "writer"):
        if hasattr(err, name):
            info[name] = getattr(err, name)
    return json.dumps(info).encode()
