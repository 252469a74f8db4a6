"""One model version as a delta: sparse upserts, tombstones, dense and featurizer state.

A delta takes a replica from version ``base`` to ``version``; a replica applies it all or
nothing and only when it serves ``base``. ``base=None`` marks a *reset*: the first version of a
publisher run, which only a snapshot of that version can reach. The payload is an
:mod:`~pipeline.publishing.array_bundle` (safetensors: JSON metadata + raw little-endian
arrays); Kafka framing and
checksums are :mod:`pipeline.publishing.chunks`' business.

::

    meta   {"kind": "delta", "version": 12, "base": 11, "store_version": 480,
            "created_at": "...+00:00", "step_time": "...+00:00",
            "tables": [{"name": "ads", "dim": 8}, ...],
            "state":  [{"name": "dense/top.0.weight", "kind": "full"},
                       {"name": "featurizer/agg.c.keys", "kind": "patch", "axis": 0,
                        "shape": [1042]}, ...]}
    arrays t0.ids int64 (n,) | t0.emb float32 (n, dim) | t0.tombstones int64 (m,) | ...
           s0 (whole array) | s1.index int64, s1.values (patch) | ...

State names are ``dense/<parameter>`` (the model's ``state_dict``) and ``featurizer/<key>``
(the featurizer's ``state_dict``); the optimizer state of rows is not sent: serving does not
need it.

>>> from datetime import UTC, datetime
>>> t = datetime(2024, 5, 1, tzinfo=UTC)
>>> delta = ModelDelta(
...     version=2, base=1, created_at=t, step_time=t, store_version=40,
...     tables=(TableDelta("ads", np.array([3], np.int64), np.ones((1, 2), np.float32),
...                        np.array([9], np.int64)),),
...     state={"dense/w": np.zeros(2, np.float32)})
>>> back = ModelDelta.from_bytes(delta.to_bytes())
>>> back.version, back.base, back.rows, back.tombstones, back.tables[0].emb.tolist()
(2, 1, 1, 1, [[1.0, 1.0]])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from pipeline.publishing.array_bundle import decode_bundle, encode_bundle
from pipeline.publishing.array_patch import AnyArray, ArrayPatch, ArrayUpdate
from pipeline.publishing.errors import DeltaFormatError

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

DENSE_PREFIX: Final = "dense/"
FEATURIZER_PREFIX: Final = "featurizer/"


@dataclass(frozen=True)
class TableDelta:
    """Rows of one table upserted (``ids``, ``emb`` of shape ``(n, dim)``) and ids deleted."""

    name: str
    ids: I64
    emb: F32
    tombstones: I64

    @property
    def dim(self) -> int:
        """Width of the table's embeddings."""
        return int(self.emb.shape[1])


@dataclass(frozen=True)
class ModelDelta:
    """Everything that changed between model versions ``base`` and ``version``."""

    version: int
    base: int | None
    created_at: datetime
    step_time: datetime
    store_version: int
    tables: tuple[TableDelta, ...] = ()
    state: Mapping[str, ArrayUpdate] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Rows upserted, all tables together."""
        return sum(len(t.ids) for t in self.tables)

    @property
    def tombstones(self) -> int:
        """Ids deleted, all tables together."""
        return sum(len(t.tombstones) for t in self.tables)

    @property
    def is_reset(self) -> bool:
        """True for a reset marker (no base: reachable only from a snapshot)."""
        return self.base is None

    def describe(self) -> str:
        """``delta v12 (base 11)``, for messages."""
        return f"delta v{self.version} (base {self.base})"

    def to_bytes(self) -> bytes:
        """The bundle of this delta."""
        arrays: dict[str, AnyArray] = {}
        tables: list[dict[str, Any]] = []
        for i, t in enumerate(self.tables):
            tables.append({"name": t.name, "dim": t.dim})
            arrays[f"t{i}.ids"] = np.asarray(t.ids, np.int64)
            arrays[f"t{i}.emb"] = np.asarray(t.emb, np.float32)
            arrays[f"t{i}.tombstones"] = np.asarray(t.tombstones, np.int64)
        state: list[dict[str, Any]] = []
        for i, (name, upd) in enumerate(self.state.items()):
            if isinstance(upd, ArrayPatch):
                state.append(
                    {"name": name, "kind": "patch", "axis": upd.axis, "shape": list(upd.shape)}
                )
                arrays[f"s{i}.index"] = upd.index
                arrays[f"s{i}.values"] = upd.values
            else:
                state.append({"name": name, "kind": "full"})
                arrays[f"s{i}"] = upd
        meta = {
            "kind": "delta",
            "version": self.version,
            "base": self.base,
            "store_version": self.store_version,
            "created_at": self.created_at.isoformat(),
            "step_time": self.step_time.isoformat(),
            "tables": tables,
            "state": state,
        }
        return encode_bundle(meta, arrays)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ModelDelta:
        """Parse a delta bundle; raises ``DeltaFormatError`` naming what is wrong."""
        meta, arrays = decode_bundle(data, "delta")
        what = f"delta v{meta.get('version')}"
        if meta.get("kind") != "delta":
            raise DeltaFormatError(what, f"bundle kind is {meta.get('kind')!r}, not 'delta'")
        version, base = meta.get("version"), meta.get("base")
        if not isinstance(version, int) or not (base is None or isinstance(base, int)):
            raise DeltaFormatError(what, "version and base must be integers")
        try:
            tables = tuple(_table(i, entry, arrays, what) for i, entry in enumerate(meta["tables"]))
            state = {e["name"]: _state(i, e, arrays, what) for i, e in enumerate(meta["state"])}
            return cls(
                version=version,
                base=base,
                created_at=parse_time(meta["created_at"], what),
                step_time=parse_time(meta["step_time"], what),
                store_version=int(meta["store_version"]),
                tables=tables,
                state=state,
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, DeltaFormatError):
                raise
            raise DeltaFormatError(what, f"malformed metadata: {err!r}") from err


def parse_time(text: object, what: str) -> datetime:
    """A timezone-aware datetime from ISO-8601 text (naive or malformed text raises)."""
    if not isinstance(text, str):
        raise DeltaFormatError(what, f"timestamp {text!r} is not a string")
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError as err:
        raise DeltaFormatError(what, f"bad timestamp {text!r}") from err
    if stamp.tzinfo is None:
        raise DeltaFormatError(what, f"timestamp {text!r} has no timezone")
    return stamp


def _table(
    i: int, entry: Mapping[str, Any], arrays: Mapping[str, AnyArray], what: str
) -> TableDelta:
    name, dim = entry["name"], entry["dim"]
    ids, emb, tomb = arrays[f"t{i}.ids"], arrays[f"t{i}.emb"], arrays[f"t{i}.tombstones"]
    if ids.dtype != np.int64 or tomb.dtype != np.int64 or emb.dtype != np.float32:
        raise DeltaFormatError(what, f"table {name!r}: ids must be int64 and emb float32")
    if ids.ndim != 1 or tomb.ndim != 1 or emb.shape != (len(ids), dim):
        raise DeltaFormatError(
            what, f"table {name!r}: emb {emb.shape} does not fit {len(ids)} ids of dim {dim}"
        )
    return TableDelta(str(name), ids, emb, tomb)


def _state(
    i: int, entry: Mapping[str, Any], arrays: Mapping[str, AnyArray], what: str
) -> ArrayUpdate:
    if entry["kind"] == "full":
        return arrays[f"s{i}"]
    if entry["kind"] != "patch":
        raise DeltaFormatError(what, f"state {entry['name']!r} has kind {entry['kind']!r}")
    index = arrays[f"s{i}.index"]
    if index.dtype != np.int64 or index.ndim != 1:
        raise DeltaFormatError(what, f"state {entry['name']!r}: patch index must be int64 (n,)")
    return ArrayPatch(
        int(entry["axis"]), index, arrays[f"s{i}.values"], tuple(int(s) for s in entry["shape"])
    )


def state_arrays(
    dense_state: Mapping[str, torch.Tensor | AnyArray],
    featurizer_state: Mapping[str, AnyArray],
) -> dict[str, AnyArray]:
    """One flat mapping of named arrays: ``dense/<param>`` and ``featurizer/<key>`` (copies).

    >>> sorted(state_arrays({"w": torch.zeros(2)}, {"events_seen": np.array([3])}))
    ['dense/w', 'featurizer/events_seen']
    """
    out: dict[str, AnyArray] = {}
    for name, value in dense_state.items():
        if isinstance(value, torch.Tensor):
            out[DENSE_PREFIX + name] = value.detach().cpu().numpy().copy()
        else:
            out[DENSE_PREFIX + name] = np.array(value, copy=True)
    for name, arr in featurizer_state.items():
        out[FEATURIZER_PREFIX + name] = np.array(arr, copy=True)
    return out


def split_state(arrays: Mapping[str, AnyArray]) -> tuple[dict[str, AnyArray], dict[str, AnyArray]]:
    """Inverse of :func:`state_arrays`: ``(dense_state, featurizer_state)``.

    >>> split_state({"dense/w": np.zeros(1), "featurizer/k": np.ones(1)})[1]["k"].tolist()
    [1.0]
    """
    dense = {
        k.removeprefix(DENSE_PREFIX): v for k, v in arrays.items() if k.startswith(DENSE_PREFIX)
    }
    feats = {
        k.removeprefix(FEATURIZER_PREFIX): v
        for k, v in arrays.items()
        if k.startswith(FEATURIZER_PREFIX)
    }
    return dense, feats
