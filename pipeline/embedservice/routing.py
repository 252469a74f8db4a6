"""Which service shard holds an id: a salted 64-bit hash modulo the shard count.

The salt differs from the store's own (``embedding_store.store.SHARD_SALT``), so the ids one
service shard holds still spread over that shard's internal store shards.

>>> import numpy as np
>>> ids = np.arange(10, dtype=np.int64)
>>> parts = split(ids, 3)
>>> sorted(np.concatenate(parts).tolist()) == list(range(10)), len(parts)
(True, 3)
>>> bool((shard_of(ids[parts[1]], 3) == 1).all())
True
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from embedding_store.initializers import hash_ids

ROUTE_SALT: Final = 0xE4B3_D5E2_7A11
I64 = npt.NDArray[np.int64]


def shard_of(ids: I64, num_shards: int) -> I64:
    """The service shard of each id."""
    if num_shards == 1:
        return np.zeros(len(ids), dtype=np.int64)
    return (hash_ids(ids, ROUTE_SALT) % np.uint64(num_shards)).astype(np.int64)


def split(ids: I64, num_shards: int) -> list[I64]:
    """Positions in ``ids`` of each shard's ids (stable order inside a shard)."""
    if num_shards == 1:
        return [np.arange(len(ids), dtype=np.int64)]
    shard = shard_of(ids, num_shards)
    order = np.argsort(shard, kind="stable")
    bounds = np.cumsum(np.bincount(shard, minlength=num_shards))[:-1]
    return list(np.split(order, bounds))
