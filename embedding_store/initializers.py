"""Deterministic row initialisation: a row's first value depends only on (table seed, id).

This is what makes placement invisible: a row created in shard 0 or 3, in DRAM or after a
round trip through RocksDB, on rank 0 or 1, starts from the same numbers.

>>> import numpy as np
>>> a = initial_values(np.array([7, 8], dtype=np.int64), dim=3, seed=1, scale=0.1)
>>> b = initial_values(np.array([8], dtype=np.int64), dim=3, seed=1, scale=0.1)
>>> bool((a[1] == b[0]).all()), a.dtype, bool(abs(a).max() <= 0.1)
(True, dtype('float32'), True)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from embedding_store.types import IdArray

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The splitmix64 finaliser, vectorised (wrapping uint64 arithmetic).

    The one copy: feature hashing (``pipeline.features.hashing``) and the synthetic
    generators use it too.

    >>> int(splitmix64(np.array([0], dtype=np.uint64))[0])
    16294208416658607535
    """
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def hash_ids(ids: IdArray, salt: int = 0) -> npt.NDArray[np.uint64]:
    """A well-mixed 64-bit hash of each id (used for sharding and ranks)."""
    with np.errstate(over="ignore"):
        return splitmix64(ids.astype(np.uint64) ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF))


def initial_values(ids: IdArray, dim: int, seed: int, scale: float) -> npt.NDArray[np.float32]:
    """Uniform ``[-scale, scale]`` values, shape ``(len(ids), dim)``, a function of (seed, id)."""
    base = hash_ids(
        np.asarray(ids, dtype=np.int64), salt=splitmix64(np.array([seed], np.uint64))[0]
    )
    with np.errstate(over="ignore"):
        cols = np.arange(dim, dtype=np.uint64) * _GOLDEN
        bits = splitmix64(base[:, None] ^ cols[None, :])
    # top 24 bits -> [0, 1) exactly representable in float32
    unit = (bits >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))
    return ((unit * 2.0 - 1.0) * np.float32(scale)).astype(np.float32)
