"""Writing one checkpoint directory: temporary directory, fsync everything, rename into place.

::

    <root>/.tmp-<uuid>/  ◄─ parts, tombstones, dense arrays (each fsynced, sha256 on the fly)
                          ◄─ manifest.json (lists every file with its sha256), fsynced
      fsync(.tmp-<uuid>)
    rename ─► <root>/chain-NNNNNN/ckpt-NNNN/      fsync(chain dir), fsync(root)

The rename makes the directory appear whole or not at all; the checkpoint only counts once
the chain manifest lists it (see :mod:`operators.checkpoint.chain`), so a crash anywhere here leaves
an unlisted directory that the next writer removes.

>>> import tempfile, numpy as np
>>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
>>> from operators.checkpoint.snapshot import capture_full
>>> with tempfile.TemporaryDirectory() as d:
...     with EmbeddingStore(StoreConfig(d + "/s", (TableConfig("t", 2),), 1)) as store:
...         _ = store.lookup("t", np.arange(5, dtype=np.int64)); store.end_step()
...         with store.step_boundary():
...             snap = capture_full(store, {}, {}, config_hash="", extra={}, materialize=True)
...     manifest, sha, path = write_checkpoint(d, snap, 1, 0, None, rows_per_file=2)
...     names = sorted(os.listdir(path))
>>> manifest.rows, names[:3]
(5, ['manifest.json', 'rows-t-0000.ids.npy', 'rows-t-0000.rows.npy'])
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from embedding_store.admission import SIGHTING_DTYPE
from embedding_store.tier import RowBlock
from embedding_store.types import IdArray
from operators.checkpoint.chain import chain_dirname, checkpoint_id
from operators.checkpoint.dense_state import DENSE_FILE, encode_dense
from operators.checkpoint.durable_io import fsync_dir, json_bytes, write_bytes, write_npy
from operators.checkpoint.format import (
    MANIFEST,
    CheckpointKind,
    CheckpointManifest,
    DenseEntry,
    FileEntry,
    RowPart,
    TableEntry,
    rows_file_names,
    sightings_file_name,
    tombstone_file_name,
)
from operators.checkpoint.snapshot import CheckpointSnapshot, TableSnapshot
from operators.errors import CheckpointWriteError

TMP_PREFIX = ".tmp-"
FileHook = Callable[[str], None]


class _DirWriter:
    """Writes arrays into one directory and remembers their checksums."""

    def __init__(self, path: str, hook: FileHook | None) -> None:
        self.path = path
        self.hook = hook
        self.files: dict[str, FileEntry] = {}

    def array(self, name: str, array: npt.NDArray[Any]) -> None:
        sha, size = write_npy(os.path.join(self.path, name), array)
        self.files[name] = FileEntry(sha, size)
        if self.hook is not None:
            self.hook(os.path.join(self.path, name))

    def bytes(self, name: str, data: bytes) -> None:
        sha, size = write_bytes(os.path.join(self.path, name), data)
        self.files[name] = FileEntry(sha, size)
        if self.hook is not None:
            self.hook(os.path.join(self.path, name))

    def table(self, t: TableSnapshot, rows_per_file: int, incremental: bool) -> TableEntry:
        parts: list[RowPart] = []
        ids_buf: list[IdArray] = []
        rows_buf: list[RowBlock] = []
        buffered = 0

        def flush() -> None:
            nonlocal ids_buf, rows_buf, buffered
            ids_name, rows_name = rows_file_names(t.name, len(parts))
            self.array(ids_name, np.concatenate(ids_buf).astype(np.int64, copy=False))
            self.array(rows_name, np.concatenate(rows_buf))
            parts.append(RowPart(ids_name, rows_name, buffered))
            ids_buf, rows_buf, buffered = [], [], 0

        for ids, rows in t.blocks:
            start = 0
            while start < len(ids):
                take = min(rows_per_file - buffered, len(ids) - start)
                ids_buf.append(ids[start : start + take])
                rows_buf.append(rows[start : start + take])
                buffered += take
                start += take
                if buffered >= rows_per_file:
                    flush()
        if buffered:
            flush()
        tomb_name = None
        tomb_count = 0
        if incremental:
            tomb = t.tombstones if t.tombstones is not None else np.empty(0, np.int64)
            tomb_name = tombstone_file_name(t.name)
            tomb_count = len(tomb)
            self.array(tomb_name, tomb.astype(np.int64, copy=False))
        seen_name = None
        seen_count = 0
        if t.sightings is not None:
            seen_name = sightings_file_name(t.name)
            seen_count = len(t.sightings)
            self.array(seen_name, np.ascontiguousarray(t.sightings, dtype=SIGHTING_DTYPE))
        return TableEntry(
            t.name, t.dim, t.state_dim, tuple(parts), tomb_name, tomb_count, seen_name, seen_count
        )


def write_checkpoint(
    root: str,
    snapshot: CheckpointSnapshot,
    chain: int,
    index: int,
    parent: str | None,
    *,
    rows_per_file: int = 1 << 20,
    compacted_from: str | None = None,
    file_hook: FileHook | None = None,
) -> tuple[CheckpointManifest, str, str]:
    """Write ``snapshot`` as checkpoint ``index`` of ``chain``; returns manifest, its sha, path.

    ``file_hook(path)`` is called after each file is fsynced (tests slow writes down with it).
    """
    ident = checkpoint_id(chain, index)
    tmp = os.path.join(root, f"{TMP_PREFIX}{uuid.uuid4().hex}")
    final = os.path.join(root, chain_dirname(chain), f"ckpt-{index:04d}")
    try:
        os.makedirs(tmp)
        out = _DirWriter(tmp, file_hook)
        incremental = snapshot.kind is CheckpointKind.INCREMENTAL
        tables = tuple(out.table(t, rows_per_file, incremental) for t in snapshot.tables)
        dense = [
            DenseEntry(name, DENSE_FILE, value.torch_dtype)
            for name, value in sorted(snapshot.dense.items())
        ]
        if dense:  # one safetensors file for all (names and torch dtypes in its metadata)
            out.bytes(DENSE_FILE, encode_dense(snapshot.dense))
        manifest = CheckpointManifest(
            id=ident,
            chain=chain,
            index=index,
            kind=snapshot.kind,
            version=snapshot.version,
            created_at=datetime.now(UTC),
            parent=parent,
            base_version=snapshot.base_version,
            store_state=snapshot.store_state,
            store_schema=snapshot.store_schema,
            config_hash=snapshot.config_hash,
            offsets=snapshot.offsets,
            extra=snapshot.extra,
            tables=tables,
            dense=tuple(dense),
            files=out.files,
            compacted_from=compacted_from,
        )
        manifest_sha, _ = write_bytes(os.path.join(tmp, MANIFEST), json_bytes(manifest.to_json()))
        if file_hook is not None:
            file_hook(os.path.join(tmp, MANIFEST))
        fsync_dir(tmp)
        chain_dir = os.path.dirname(final)
        if not os.path.isdir(chain_dir):
            os.makedirs(chain_dir)
            fsync_dir(root)
        if os.path.exists(final):  # left by a writer that died before committing it
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(chain_dir)
    except OSError as err:
        raise CheckpointWriteError(ident, getattr(err, "filename", None) or tmp, err) from err
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest, manifest_sha, final
