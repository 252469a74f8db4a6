"""Reading and verifying one committed checkpoint directory.

Verification walks the trust chain: ``chains.json`` holds the sha256 of ``manifest.json``,
which holds the sha256 and size of every other file. Arrays are loaded with
``allow_pickle=False`` and memory-mapped, so a restore streams rows in bounded memory.

>>> p = VerificationProblem("000001-0001", "tomb-ads.npy", "checksum mismatch", "ab", "cd")
>>> str(p)
'checkpoint 000001-0001: file tomb-ads.npy: checksum mismatch (expected sha256 ab, actual cd)'
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from embedding_store.admission import SIGHTING_DTYPE, SightingBlock
from embedding_store.rows import RowLayout
from embedding_store.tier import RowBlock
from embedding_store.types import IdArray
from operators.checkpoint.chain import CheckpointInfo
from operators.checkpoint.dense_state import DenseArray, decode_dense
from operators.checkpoint.durable_io import sha256_file
from operators.checkpoint.format import MANIFEST, CheckpointManifest, TableEntry
from operators.errors import ChecksumMismatchError, CorruptCheckpointError, DenseStateError


@dataclass(frozen=True)
class VerificationProblem:
    """One thing wrong with one file of one checkpoint."""

    checkpoint: str
    file: str
    message: str
    expected: str | None = None
    actual: str | None = None

    def __str__(self) -> str:
        text = f"checkpoint {self.checkpoint}: file {self.file}: {self.message}"
        if self.expected is not None or self.actual is not None:
            text += f" (expected sha256 {self.expected}, actual {self.actual})"
        return text


class CheckpointReader:
    """Read access to one committed checkpoint under ``root``."""

    def __init__(self, root: str, info: CheckpointInfo) -> None:
        self.root = root
        self.info = info
        self._manifest: CheckpointManifest | None = None

    @property
    def path(self) -> str:
        """The checkpoint's directory."""
        return os.path.join(self.root, self.info.relpath)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def manifest(self) -> CheckpointManifest:
        """The parsed manifest, after checking its sha256 against the chain manifest's."""
        if self._manifest is not None:
            return self._manifest
        ident = self.info.id
        path = self._file(MANIFEST)
        try:
            actual = sha256_file(path)
        except OSError as err:
            raise CorruptCheckpointError(ident, MANIFEST, f"unreadable: {err}") from err
        if actual != self.info.manifest_sha256:
            raise ChecksumMismatchError(ident, MANIFEST, self.info.manifest_sha256, actual)
        try:
            with open(path, encoding="utf-8") as fh:
                manifest = CheckpointManifest.from_json(json.load(fh))
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(ident, MANIFEST, f"malformed: {err!r}") from err
        if (manifest.id, manifest.kind, manifest.version) != (
            ident,
            self.info.kind,
            self.info.version,
        ):
            raise CorruptCheckpointError(
                ident, MANIFEST, f"describes {manifest.id} v{manifest.version}, not this checkpoint"
            )
        self._manifest = manifest
        return manifest

    def verify(self) -> list[VerificationProblem]:
        """Every problem found: manifest checksum, then each file's presence, size and sha256."""
        ident = self.info.id
        try:
            manifest = self.manifest()
        except ChecksumMismatchError as err:
            return [
                VerificationProblem(ident, MANIFEST, "checksum mismatch", err.expected, err.actual)
            ]
        except CorruptCheckpointError as err:
            return [VerificationProblem(ident, MANIFEST, err.reason)]
        problems: list[VerificationProblem] = []
        referenced = {d.file for d in manifest.dense}
        for t in manifest.tables:
            referenced.update(n for p in t.parts for n in (p.ids, p.rows))
            if t.tombstones is not None:
                referenced.add(t.tombstones)
            if t.sightings is not None:
                referenced.add(t.sightings)
        for name in sorted(referenced - set(manifest.files)):
            problems.append(VerificationProblem(ident, name, "referenced but not listed"))
        for name, entry in sorted(manifest.files.items()):
            path = self._file(name)
            try:
                size = os.path.getsize(path)
                actual = sha256_file(path)
            except OSError as err:
                problems.append(VerificationProblem(ident, name, f"missing or unreadable: {err}"))
                continue
            if actual != entry.sha256:
                problems.append(
                    VerificationProblem(ident, name, "checksum mismatch", entry.sha256, actual)
                )
            elif size != entry.bytes:
                problems.append(
                    VerificationProblem(ident, name, f"size {size}, expected {entry.bytes}")
                )
        return problems

    # -- loading ---------------------------------------------------------------
    def _load(self, name: str, mmap: bool) -> npt.NDArray[Any]:
        try:
            arr: npt.NDArray[Any] = np.load(
                self._file(name), mmap_mode="r" if mmap else None, allow_pickle=False
            )
        except (OSError, ValueError) as err:
            raise CorruptCheckpointError(self.info.id, name, f"cannot be loaded: {err}") from err
        return arr

    def _ids(self, name: str, count: int | None) -> IdArray:
        ids = self._load(name, mmap=True)
        if ids.dtype != np.int64 or ids.ndim != 1 or (count is not None and len(ids) != count):
            raise CorruptCheckpointError(
                self.info.id, name, f"holds {ids.dtype}{ids.shape}, expected int64[{count}]"
            )
        return ids

    def table_blocks(
        self, table: TableEntry, chunk: int = 65536
    ) -> Iterator[tuple[IdArray, RowBlock]]:
        """The rows of ``table`` in blocks of at most ``chunk`` (copied out of the mmap)."""
        layout = RowLayout(table.dim, table.state_dim)
        for part in table.parts:
            ids = self._ids(part.ids, part.count)
            rows = self._load(part.rows, mmap=True)
            if rows.dtype != layout.dtype or rows.shape != (part.count,):
                raise CorruptCheckpointError(
                    self.info.id,
                    part.rows,
                    f"holds {rows.dtype}{rows.shape}, expected {layout.dtype}[{part.count}]",
                )
            for start in range(0, part.count, chunk):
                stop = min(start + chunk, part.count)
                yield np.array(ids[start:stop]), np.array(rows[start:stop])

    def tombstones(self, table: TableEntry) -> IdArray:
        """The ids ``table`` lost since the parent (empty for a full checkpoint)."""
        if table.tombstones is None:
            return np.empty(0, dtype=np.int64)
        return np.array(self._ids(table.tombstones, table.tombstone_count))

    def sightings(self, table: TableEntry) -> SightingBlock:
        """Ids of ``table`` seen but not admitted at this checkpoint (none if not recorded)."""
        if table.sightings is None:
            return np.empty(0, dtype=SIGHTING_DTYPE)
        block = self._load(table.sightings, mmap=False)
        if block.dtype != SIGHTING_DTYPE or block.shape != (table.sighting_count,):
            raise CorruptCheckpointError(
                self.info.id,
                table.sightings,
                f"holds {block.dtype}{block.shape}, expected {SIGHTING_DTYPE}"
                f"[{table.sighting_count}]",
            )
        return block

    def dense(self) -> dict[str, DenseArray]:
        """Every dense array, by name.

        Reads ``dense.safetensors`` (all arrays in one file) and, from checkpoints written
        before it, one ``dense-NNNN.npy`` per array.
        """
        out: dict[str, DenseArray] = {}
        bundles: dict[str, dict[str, DenseArray]] = {}
        for d in self.manifest().dense:
            if d.file.endswith(".npy"):  # the layout before safetensors
                out[d.name] = DenseArray(self._load(d.file, mmap=False), d.torch_dtype)
                continue
            if d.file not in bundles:
                try:
                    with open(self._file(d.file), "rb") as fh:
                        bundles[d.file] = decode_dense(fh.read())
                except (OSError, DenseStateError) as err:
                    raise CorruptCheckpointError(
                        self.info.id, d.file, f"cannot be loaded: {err}"
                    ) from err
            if d.name not in bundles[d.file]:
                raise CorruptCheckpointError(self.info.id, d.file, f"has no array {d.name!r}")
            out[d.name] = bundles[d.file][d.name]
        return out
