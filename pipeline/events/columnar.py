"""A batch of events held as columns: one list of values per field, decoded when first read.

What :class:`~pipeline.source.process.ProcessSource` hands the trainer: its source process
validated every event already, so the trainer process gets each field's values across the
batch and never builds one object per event. The featurizer reads it column by column
(``event_columns`` in :mod:`pipeline.features.featurizer`); anything else may still index it
and get one
event as a dict.

::

    ColumnarEvents (n events)
      "label" ──► [0, 1, 0, ...]            a list, or a function making it on first read
      "i1"    ──► [5, None, 12, ...]        (then kept)
      "c1"    ──► ["68fd1e64", None, ...]
    column("i1") ─► the list        [k] ─► {"label": 0, "i1": 5, "c1": "68fd1e64", ...}
                                          (an EventRecord: event["i1"] or event.i1)

A field not in the batch reads as ``None`` for every event, as ``Mapping.get`` would.

A string column may also come with its values' unsalted 64-bit hashes, computed by the
source process (:class:`~pipeline.features.hashing.StringHasher`): ``string_hashes(name)``
gives them,
and the featurizer salts them instead of hashing the text itself.

>>> batch = ColumnarEvents(2, {"label": [0, 1], "c1": lambda: ["68fd1e64", None]})
>>> len(batch), batch.column("c1"), batch.column("i9")
(2, ['68fd1e64', None], [None, None])
>>> batch[1], batch[1].label
({'label': 1, 'c1': None}, 1)
>>> batch[1:].to_records()
[{'label': 1, 'c1': None}]
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np
import numpy.typing as npt

__all__ = ["ColumnarEvents", "EventRecord", "LazyColumn", "LazyHashes"]

LazyColumn = list[Any] | Callable[[], list[Any]]
"""A column's values, or a function returning them (called at most once)."""

LazyHashes = npt.NDArray[np.uint64] | Callable[[], npt.NDArray[np.uint64]]
"""A string column's hashes, or a function returning them."""


class EventRecord(dict[str, Any]):
    """One event taken out of a :class:`ColumnarEvents`: a dict whose fields read as attributes.

    So code written for the event models (``event.label``) reads it too; a field named like a
    dict method (``items``, ``get``, ...) is only reachable as ``event["items"]``.

    >>> e = EventRecord({"label": 1, "c1": None})
    >>> e.label, e["c1"], e == {"label": 1, "c1": None}
    (1, None, True)
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the event has no field {name!r}") from None


class ColumnarEvents(Sequence[EventRecord]):
    """``n`` events as named columns of equal length (see the module docstring)."""

    __slots__ = ("_columns", "_hashes", "_lock", "_n")

    def __init__(
        self,
        n: int,
        columns: Mapping[str, LazyColumn],
        string_hashes: Mapping[str, LazyHashes] | None = None,
    ) -> None:
        self._n = n
        self._columns: dict[str, LazyColumn] = dict(columns)
        self._hashes: dict[str, LazyHashes] = dict(string_hashes or {})
        self._lock = threading.Lock()

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> ColumnarEvents:
        """Columns of ``records`` (dicts); a field missing from a record is ``None`` there.

        >>> ColumnarEvents.from_records([{"a": 1}, {"b": 2}]).column("a")
        [1, None]
        """
        names = list(dict.fromkeys(name for r in records for name in r))
        return cls(len(records), {n: [r.get(n) for r in records] for n in names})

    @property
    def names(self) -> tuple[str, ...]:
        """The fields the batch carries, in their order."""
        return tuple(self._columns)

    def column(self, name: str) -> list[Any]:
        """The values of field ``name`` across the batch (decoded now if not yet)."""
        values = self._columns.get(name)
        if values is None:
            return [None] * self._n
        if isinstance(values, list):
            return values
        with self._lock:  # decode once even if two threads ask at the same time
            current = self._columns[name]
            if isinstance(current, list):
                return current
            decoded = current()
            if len(decoded) != self._n:
                raise ValueError(f"column {name!r} has {len(decoded)} values, expected {self._n}")
            self._columns[name] = decoded
            return decoded

    def string_hashes(self, name: str) -> npt.NDArray[np.uint64] | None:
        """The hashes the source computed for string field ``name``, or ``None`` if none.

        >>> import numpy as np
        >>> batch = ColumnarEvents(1, {"c1": ["a"]}, {"c1": np.array([7], dtype=np.uint64)})
        >>> batch.string_hashes("c1").tolist(), batch.string_hashes("c2")
        ([7], None)
        """
        hashes = self._hashes.get(name)
        if hashes is None or isinstance(hashes, np.ndarray):
            return hashes
        with self._lock:
            current = self._hashes[name]
            if isinstance(current, np.ndarray):
                return current
            made = current()
            if made.shape != (self._n,):
                raise ValueError(f"hashes of {name!r}: shape {made.shape}, expected ({self._n},)")
            self._hashes[name] = made
            return made

    def to_records(self) -> list[EventRecord]:
        """Every event as a dict (decodes every column)."""
        if not self._columns:
            return [EventRecord() for _ in range(self._n)]
        cols = {name: self.column(name) for name in self._columns}
        names = list(cols)
        rows = zip(*cols.values(), strict=True)
        return [EventRecord(zip(names, row, strict=True)) for row in rows]

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> EventRecord: ...

    @overload
    def __getitem__(self, index: slice) -> ColumnarEvents: ...

    def __getitem__(self, index: int | slice) -> EventRecord | ColumnarEvents:
        if isinstance(index, slice):
            cols = {name: self.column(name)[index] for name in self._columns}
            hashes = {}
            for name in self._hashes:
                h = self.string_hashes(name)
                assert h is not None
                hashes[name] = h[index]
            return ColumnarEvents(len(range(*index.indices(self._n))), cols, hashes)
        if not -self._n <= index < self._n:
            raise IndexError(f"event {index} of a batch of {self._n}")
        return EventRecord((name, self.column(name)[index]) for name in self._columns)

    def __iter__(self) -> Iterator[EventRecord]:
        return iter(self.to_records())

    def __repr__(self) -> str:
        return f"ColumnarEvents({self._n} events, fields {list(self._columns)})"
