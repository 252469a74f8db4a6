"""Exact patches between two versions of a named array, so deltas carry only what changed.

A model version carries its dense parameters and its featurizer state as named arrays. The
featurizer's per-entity aggregates grow with the number of entities but change only where
events arrived, so a delta sends a patch: the slices (along the array's longest axis) whose
bytes differ, plus the new shape. Arrays that shrank, changed dtype or rank, or whose patch
would not be much smaller than the array, travel whole.

::

    previous  (3, 4, 2)      current (3, 6, 2)         patch: axis 1, shape (3, 6, 2)
    [.. a b c d ..]    ──►   [.. a B c d e f ..]  ──►   index [1, 4, 5], values (3, 3, 2)

Comparison is bitwise, so NaNs compare equal to themselves and ``apply_patch(prev,
diff(prev, cur))`` is ``cur`` bit for bit.

>>> prev = np.zeros((3, 4), np.float64)
>>> cur = np.zeros((3, 6), np.float64); cur[:, 1] = 1.0; cur[:, 5] = 2.0
>>> upd = diff(prev, cur, max_ratio=1.0)
>>> upd.axis, upd.index.tolist(), upd.shape
(1, [1, 4, 5], (3, 6))
>>> bool((apply_update(prev, upd) == cur).all())
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

AnyArray: TypeAlias = npt.NDArray[Any]


@dataclass(frozen=True)
class ArrayPatch:
    """The slices ``index`` along ``axis`` of an array of ``shape`` now hold ``values``.

    Slices beyond the previous array's extent along ``axis`` that are not in ``index`` are
    zero (they never are in practice: new slices always differ from nothing, so they are sent).
    """

    axis: int
    index: npt.NDArray[np.int64]
    values: AnyArray
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes this patch carries."""
        return int(self.index.nbytes + self.values.nbytes)


ArrayUpdate: TypeAlias = AnyArray | ArrayPatch
"""A whole new array, or a patch to the previous one."""


def _rows_bytes(a: AnyArray, axis: int) -> npt.NDArray[np.uint8]:
    moved = np.ascontiguousarray(np.moveaxis(a, axis, 0))
    flat = moved.reshape(moved.shape[0], -1)
    return flat.view(np.uint8).reshape(moved.shape[0], -1)


def diff(prev: AnyArray | None, cur: AnyArray, max_ratio: float = 0.5) -> ArrayUpdate:
    """A patch from ``prev`` to ``cur``, or ``cur`` itself when a patch does not pay.

    A patch is used when ``prev`` has the same dtype and rank, ``cur`` is no smaller along
    the patch axis and equal along every other axis, and the patch is at most ``max_ratio``
    of ``cur``'s bytes.
    """
    if (
        prev is None
        or prev.dtype != cur.dtype
        or prev.ndim != cur.ndim
        or cur.ndim == 0
        or cur.size == 0
    ):
        return cur
    axis = int(np.argmax(cur.shape))
    others_equal = all(
        p == c for i, (p, c) in enumerate(zip(prev.shape, cur.shape, strict=True)) if i != axis
    )
    old = prev.shape[axis]
    if not others_equal or old > cur.shape[axis]:
        return cur
    head = np.take(cur, np.arange(old), axis=axis)
    changed = np.flatnonzero((_rows_bytes(head, axis) != _rows_bytes(prev, axis)).any(axis=1))
    index = np.concatenate([changed, np.arange(old, cur.shape[axis])]).astype(np.int64)
    values = np.ascontiguousarray(np.take(cur, index, axis=axis))
    patch = ArrayPatch(axis, index, values, tuple(int(s) for s in cur.shape))
    if patch.nbytes > max_ratio * cur.nbytes:
        return cur
    return patch


def apply_update(prev: AnyArray | None, update: ArrayUpdate) -> AnyArray:
    """The array after ``update``: a copy of it if whole, else ``prev`` patched (a new array).

    Raises ``ValueError`` when the patch does not fit ``prev``.
    """
    if not isinstance(update, ArrayPatch):
        return np.array(update, copy=True)
    if prev is None:
        raise ValueError("a patch needs the previous array, and there is none")
    axis, shape = update.axis, update.shape
    if prev.ndim != len(shape) or not 0 <= axis < prev.ndim:
        raise ValueError(f"patch of rank {len(shape)} on axis {axis} for an array of {prev.shape}")
    if any(p != s for i, (p, s) in enumerate(zip(prev.shape, shape, strict=True)) if i != axis):
        raise ValueError(f"patch to shape {shape} does not fit an array of {prev.shape}")
    if prev.shape[axis] > shape[axis]:
        raise ValueError(f"patch to shape {shape} would shrink an array of {prev.shape}")
    if len(update.index) and (update.index.min() < 0 or update.index.max() >= shape[axis]):
        raise ValueError(f"patch index out of range for axis {axis} of length {shape[axis]}")
    want = list(shape)
    want[axis] = len(update.index)
    if tuple(update.values.shape) != tuple(want) or update.values.dtype != prev.dtype:
        raise ValueError(
            f"patch values are {update.values.dtype}{update.values.shape}, "
            f"expected {prev.dtype}{tuple(want)}"
        )
    out = np.zeros(shape, dtype=prev.dtype)
    lead = [slice(None)] * prev.ndim
    lead[axis] = slice(0, prev.shape[axis])
    out[tuple(lead)] = prev
    moved = np.moveaxis(out, axis, 0)  # a view: writing through it writes ``out``
    moved[update.index] = np.moveaxis(update.values, axis, 0)
    return out
