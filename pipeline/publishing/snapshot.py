"""Full snapshots of a model version in a directory: written atomically, verified when read.

::

    <root>/
      v00000000000000000042/            one complete snapshot (the name sorts by version)
        MANIFEST.json                   version, times, Kafka position, files with sha256, hmac
        state.fsb                       dense parameters + featurizer state (array bundle:
                                        a safetensors file, metadata in ``__metadata__``)
        rows-<table>-00000.fsb ...      ids int64 (n,) + emb float32 (n, dim), per export chunk
      .tmp-v00000000000000000043-<id>/  being written: never read

A snapshot is written into a temporary directory, every file and the directory are fsynced,
then it is renamed into place, so a reader sees all of it or none. The manifest names the
Kafka offset of the first delta after this version, where a replica starts consuming after
loading it. Only the ``retain`` newest snapshots are kept.

>>> import tempfile
>>> from datetime import UTC, datetime
>>> t = datetime(2024, 5, 1, tzinfo=UTC)
>>> with tempfile.TemporaryDirectory() as d:
...     snaps = SnapshotStore(d, retain=2)
...     w = snaps.begin(version=5, store_version=100, step_time=t)
...     w.add_rows("ads", np.array([1, 2], np.int64), np.ones((2, 4), np.float32))
...     w.set_state({"dense/w": np.zeros(3, np.float32)})
...     info = w.commit(topic="deltas", partition=0, next_offset=17)
...     newest = snaps.newest()
...     rows = [ids.tolist() for ids, _ in snaps.iter_rows(newest, "ads")]
>>> newest.version, newest.next_offset, newest.tables["ads"].rows, rows
(5, 17, 2, [[1, 2]])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from pipeline.publishing.array_bundle import decode_bundle, encode_bundle
from pipeline.publishing.array_patch import AnyArray
from pipeline.publishing.chunks import Signer
from pipeline.publishing.delta import F32, I64, parse_time
from pipeline.publishing.errors import DeltaFormatError, SignatureError, SnapshotError

log = logging.getLogger(__name__)

MANIFEST: Final = "MANIFEST.json"
STATE_FILE: Final = "state.fsb"
SNAPSHOT_FORMAT: Final = 1
_PREFIX: Final = "v"
_TMP: Final = ".tmp-"


def snapshot_name(version: int) -> str:
    """Directory name of the snapshot of ``version`` (sorts by version)."""
    return f"{_PREFIX}{version:020d}"


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot with its size and sha256."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class TableFiles:
    """The rows files of one table."""

    dim: int
    rows: int
    files: tuple[str, ...]


@dataclass(frozen=True)
class SnapshotInfo:
    """A complete snapshot, as its manifest describes it."""

    path: Path
    version: int
    store_version: int
    created_at: datetime
    step_time: datetime
    topic: str | None
    partition: int | None
    next_offset: int | None
    tables: Mapping[str, TableFiles]
    files: Mapping[str, FileEntry]

    @property
    def rows(self) -> int:
        """Rows of every table together."""
        return sum(t.rows for t in self.tables.values())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> FileEntry:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return FileEntry(len(data), hashlib.sha256(data).hexdigest())


class SnapshotWriter:
    """One snapshot being written; :meth:`commit` makes it visible, :meth:`abort` drops it."""

    def __init__(
        self,
        store: SnapshotStore,
        version: int,
        store_version: int,
        step_time: datetime,
        created_at: datetime,
    ) -> None:
        if step_time.tzinfo is None or created_at.tzinfo is None:
            raise ValueError("snapshot timestamps must be timezone-aware")
        self.store = store
        self.version = version
        self.store_version = store_version
        self.step_time = step_time
        self.created_at = created_at
        self.tmp = store.root / f"{_TMP}{snapshot_name(version)}-{uuid.uuid4().hex[:8]}"
        self._files: dict[str, FileEntry] = {}
        self._tables: dict[str, dict[str, Any]] = {}
        self._done = False

    def open(self) -> SnapshotWriter:
        """Create the temporary directory."""
        try:
            self.store.root.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir()
        except OSError as err:
            raise SnapshotError(str(self.tmp), f"cannot create it ({err.strerror})") from err
        return self

    def _put(self, name: str, data: bytes) -> None:
        try:
            self._files[name] = _write_file(self.tmp / name, data)
        except OSError as err:
            raise SnapshotError(str(self.tmp / name), f"cannot write ({err.strerror})") from err

    def add_rows(self, table: str, ids: I64, emb: F32) -> None:
        """Add one chunk of ``table``'s rows (call repeatedly; ids unique across chunks)."""
        entry = self._tables.setdefault(table, {"dim": int(emb.shape[1]), "rows": 0, "files": []})
        if emb.shape != (len(ids), entry["dim"]):
            raise SnapshotError(str(self.tmp), f"table {table!r}: emb {emb.shape} does not fit")
        name = f"rows-{table}-{len(entry['files']):05d}.fsb"
        self._put(name, encode_bundle({"kind": "rows", "table": table}, {"ids": ids, "emb": emb}))
        entry["rows"] += len(ids)
        entry["files"].append(name)

    def add_table(self, table: str, dim: int) -> None:
        """Declare ``table`` even if it has no rows."""
        self._tables.setdefault(table, {"dim": dim, "rows": 0, "files": []})

    def set_state(self, arrays: Mapping[str, AnyArray]) -> None:
        """Write the dense and featurizer state (``dense/...``, ``featurizer/...`` arrays)."""
        self._put(STATE_FILE, encode_bundle({"kind": "state"}, arrays))

    def commit(
        self, topic: str | None = None, partition: int | None = None, next_offset: int | None = None
    ) -> SnapshotInfo:
        """Write the manifest, fsync, rename into place, prune old snapshots."""
        if STATE_FILE not in self._files:
            raise SnapshotError(str(self.tmp), "no state was written (call set_state)")
        manifest: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT,
            "version": self.version,
            "store_version": self.store_version,
            "created_at": self.created_at.isoformat(),
            "step_time": self.step_time.isoformat(),
            "kafka": {"topic": topic, "partition": partition, "next_offset": next_offset},
            "tables": self._tables,
            "files": {n: {"bytes": f.bytes, "sha256": f.sha256} for n, f in self._files.items()},
        }
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        if self.store.signer is not None:
            manifest["hmac"] = self.store.signer.sign_bytes(body)
        final = self.store.root / snapshot_name(self.version)
        try:
            _write_file(self.tmp / MANIFEST, json.dumps(manifest, sort_keys=True).encode())
            _fsync_dir(self.tmp)
            if final.exists():
                raise SnapshotError(str(final), "a snapshot of this version already exists")
            os.rename(self.tmp, final)
            _fsync_dir(self.store.root)
        except OSError as err:
            raise SnapshotError(str(final), f"cannot commit ({err.strerror})") from err
        self._done = True
        self.store.prune()
        return self.store.read_manifest(final)

    def abort(self) -> None:
        """Remove the temporary directory (idempotent)."""
        if not self._done:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._done = True


class SnapshotStore:
    """The snapshot directory: begin a snapshot, find the newest, read one, prune old ones.

    With a ``signer``, manifests are signed when written and refused unless they verify.
    """

    def __init__(
        self, root: str | os.PathLike[str], signer: Signer | None = None, retain: int = 3
    ) -> None:
        if retain < 1:
            raise ValueError("retain must be >= 1")
        self.root = Path(root)
        self.signer = signer
        self.retain = retain
        self._warned: set[str] = set()

    def begin(
        self,
        version: int,
        store_version: int,
        step_time: datetime,
        created_at: datetime | None = None,
    ) -> SnapshotWriter:
        """Start writing the snapshot of ``version`` (opens its temporary directory)."""
        when = created_at if created_at is not None else datetime.now(UTC)
        return SnapshotWriter(self, version, store_version, step_time, when).open()

    def read_manifest(self, path: Path) -> SnapshotInfo:
        """Parse and (with a signer) verify one snapshot's manifest."""
        try:
            raw = (path / MANIFEST).read_bytes()
            obj = json.loads(raw)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SnapshotError(str(path), f"unreadable manifest: {err}") from err
        if not isinstance(obj, dict) or obj.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(str(path), "manifest is not a format-1 object")
        mac = obj.pop("hmac", None)
        if self.signer is not None:
            body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
            if not isinstance(mac, str) or mac != self.signer.sign_bytes(body):
                raise SignatureError(f"snapshot {path}", "manifest HMAC missing or wrong")
        try:
            kafka = obj.get("kafka") or {}
            return SnapshotInfo(
                path=path,
                version=int(obj["version"]),
                store_version=int(obj["store_version"]),
                created_at=parse_time(obj["created_at"], str(path)),
                step_time=parse_time(obj["step_time"], str(path)),
                topic=kafka.get("topic"),
                partition=kafka.get("partition"),
                next_offset=kafka.get("next_offset"),
                tables={
                    n: TableFiles(int(t["dim"]), int(t["rows"]), tuple(t["files"]))
                    for n, t in obj["tables"].items()
                },
                files={
                    n: FileEntry(int(f["bytes"]), str(f["sha256"])) for n, f in obj["files"].items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError, DeltaFormatError) as err:
            raise SnapshotError(str(path), f"malformed manifest: {err!r}") from err

    def available(self) -> list[SnapshotInfo]:
        """Every complete snapshot whose manifest verifies, newest first."""
        try:
            names = sorted(
                (p for p in self.root.iterdir() if p.name.startswith(_PREFIX)), reverse=True
            )
        except FileNotFoundError:
            return []
        out: list[SnapshotInfo] = []
        for path in names:
            try:
                out.append(self.read_manifest(path))
            except (SnapshotError, SignatureError) as err:
                if path.name not in self._warned:
                    self._warned.add(path.name)
                    log.warning("skipping snapshot: %s", err)
        return out

    def max_version(self) -> int | None:
        """The highest version among snapshot directories, valid or not (for numbering)."""
        try:
            names = [p.name for p in self.root.iterdir() if p.name.startswith(_PREFIX)]
        except FileNotFoundError:
            return None
        versions = [int(n[len(_PREFIX) :]) for n in names if n[len(_PREFIX) :].isdigit()]
        return max(versions) if versions else None

    def newest(self, above: int | None = None) -> SnapshotInfo | None:
        """The newest valid snapshot (with a version greater than ``above`` if given)."""
        infos = self.available()
        if not infos or (above is not None and infos[0].version <= above):
            return None
        return infos[0]

    def _read(self, info: SnapshotInfo, name: str) -> tuple[dict[str, Any], dict[str, AnyArray]]:
        entry = info.files.get(name)
        path = info.path / name
        if entry is None:
            raise SnapshotError(str(path), "not listed in the manifest")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise SnapshotError(str(path), f"cannot read ({err.strerror})") from err
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != entry.bytes or digest != entry.sha256:
            raise SnapshotError(str(path), f"sha256 {digest[:12]}... differs from the manifest's")
        try:
            return decode_bundle(data, str(path))
        except DeltaFormatError as err:
            raise SnapshotError(str(path), str(err)) from err

    def read_state(self, info: SnapshotInfo) -> dict[str, AnyArray]:
        """The dense and featurizer arrays of a snapshot, verified."""
        return self._read(info, STATE_FILE)[1]

    def iter_rows(self, info: SnapshotInfo, table: str) -> Iterator[tuple[I64, F32]]:
        """``(ids, emb)`` chunks of ``table``, each verified against the manifest."""
        entry = info.tables.get(table)
        if entry is None:
            raise SnapshotError(str(info.path), f"has no table {table!r}")
        for name in entry.files:
            _, arrays = self._read(info, name)
            ids, emb = arrays["ids"], arrays["emb"]
            shape_ok = ids.ndim == 1 and emb.shape == (len(ids), entry.dim)
            if ids.dtype != np.int64 or emb.dtype != np.float32 or not shape_ok:
                raise SnapshotError(str(info.path / name), "rows have the wrong dtype or shape")
            yield ids, emb

    def prune(self) -> list[int]:
        """Delete all but the ``retain`` newest snapshots; returns the versions deleted."""
        try:
            names = sorted(
                (p for p in self.root.iterdir() if p.name.startswith(_PREFIX)), reverse=True
            )
        except FileNotFoundError:
            return []
        gone: list[int] = []
        for path in names[self.retain :]:
            shutil.rmtree(path, ignore_errors=True)
            try:
                gone.append(int(path.name[len(_PREFIX) :]))
            except ValueError:
                continue
        return gone
