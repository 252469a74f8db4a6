"""Dense state saved as patches: a chain's layers of named arrays, applied in order at restore.

Most dense state (model parameters, optimizer state) is small and saved whole in every
checkpoint. State that grows with the data and changes only in part (a featurizer's
per-entity aggregates) would make every increment as large as the whole; a
:class:`PatchSource` instead gives, at each capture, the whole state for a full checkpoint and
only what changed since the base for an increment. The manager stores it among the dense
arrays as *layers*::

    full checkpoint   dense: model/..., optim/..., patch/0000/<name>    (layer 0: the whole)
    increment 1       dense: model/..., optim/..., patch/0000/<name>    (changes since base)
    increment 2       ...
    compacted full    dense: the tip's arrays, patch/0000/... patch/0002/... (every layer kept)

Restore gives the layers of the whole chain, base first (:func:`chain_layers`); the caller
applies them in order. What a layer means (whole or a change) is the source's business: the
checkpoint machinery only keeps the order. Compaction keeps every layer, so it never needs
to understand them.

>>> import numpy as np
>>> dense = with_layers({"w": np.ones(1)}, [{"k": np.arange(2)}])
>>> sorted(dense)
['patch/0000/k', 'w']
>>> plain, layers = split_layers(dense)
>>> sorted(plain), [sorted(layer) for layer in layers]
(['w'], [['k']])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol, TypeVar

from operators.checkpoint.dense_state import DenseValue
from operators.errors import DenseStateError

PATCH_PREFIX: Final = "patch/"
"""Dense names under this prefix are patch layers (``patch/<layer:04d>/<name>``)."""

V = TypeVar("V")  # pragma: no mutate  (used only in annotations, never evaluated)


class PatchSource(Protocol):
    """Gives the patch a checkpoint captured at a step boundary holds (called at the capture).

    ``base_version`` is ``None`` for a full checkpoint (give the whole state) and the base's
    store version for an increment (give what changed since the capture at that version).
    """

    def capture(self, version: int, base_version: int | None) -> Mapping[str, DenseValue]:
        """The patch for a checkpoint at store ``version`` (copies: it is written later)."""
        ...


def with_layers(
    dense: Mapping[str, V], layers: Sequence[Mapping[str, V]], start: int = 0
) -> dict[str, V]:
    """``dense`` plus each layer's arrays as ``patch/<start + i>/<name>``."""
    out = dict(dense)
    for i, layer in enumerate(layers):
        for name, value in layer.items():
            out[f"{PATCH_PREFIX}{start + i:04d}/{name}"] = value
    return out


def split_layers(dense: Mapping[str, V]) -> tuple[dict[str, V], list[dict[str, V]]]:
    """``(arrays that are not patches, layers in order)``; the inverse of :func:`with_layers`."""
    plain: dict[str, V] = {}
    numbered: dict[int, dict[str, V]] = {}
    for name, value in dense.items():
        if not name.startswith(PATCH_PREFIX):
            plain[name] = value
            continue
        layer, sep, rest = name.removeprefix(PATCH_PREFIX).partition("/")
        if not sep or not layer.isdigit() or not rest:
            raise DenseStateError(name, "a patch array is named patch/<layer>/<name>")
        numbered.setdefault(int(layer), {})[rest] = value
    if sorted(numbered) != list(range(len(numbered))):
        raise DenseStateError(PATCH_PREFIX, f"patch layers {sorted(numbered)} are not 0..n-1")
    return plain, [numbered[i] for i in range(len(numbered))]


def chain_layers(denses: Iterable[Mapping[str, V]]) -> list[dict[str, V]]:
    """The patch layers of a chain (each checkpoint's dense arrays, base first), in order."""
    out: list[dict[str, V]] = []
    for dense in denses:
        out.extend(split_layers(dense)[1])
    return out
