"""The registry of tier implementations, for the contract tests and for tier chains.

Each factory takes a scratch directory and a row layout and returns an open tier plus a
cleanup function. A new tier (GPU, SSD, remote) adds itself here and
``tests/contracts/test_tier_contract.py`` checks it with no further change.

>>> sorted(TIER_FACTORIES)
['dram', 'rocksdb', 'slab', 'slab+rocksdb']
"""

from __future__ import annotations

import os
from collections.abc import Callable

from embedding_store.chain import SlabChain
from embedding_store.dram import DramTier
from embedding_store.rocks import RocksShard
from embedding_store.rows import RowLayout
from embedding_store.slab import SlabTier
from embedding_store.tier import Tier

TierFactory = Callable[[str, RowLayout], tuple[Tier, Callable[[], None]]]


def _dram(directory: str, layout: RowLayout) -> tuple[Tier, Callable[[], None]]:
    del directory
    tier = DramTier(layout, initial_capacity=16)
    return tier, lambda: None


def _rocksdb(directory: str, layout: RowLayout) -> tuple[Tier, Callable[[], None]]:
    shard = RocksShard(os.path.join(directory, "rocks"), ["contract"])
    shard.open()
    return shard.tier("contract", layout), shard.close


def _slab(directory: str, layout: RowLayout) -> tuple[Tier, Callable[[], None]]:
    # a small resident limit, so that the contract also runs across page releases
    tier = SlabTier(os.path.join(directory, "t.slab"), layout, 4096, resident_bytes=64 << 10)
    tier.open()
    return tier, tier.close


def _slab_over_rocksdb(directory: str, layout: RowLayout) -> tuple[Tier, Callable[[], None]]:
    # room for 64 rows: the contract's bigger puts demote rows to RocksDB and read them back
    shard = RocksShard(os.path.join(directory, "rocks"), ["contract"])
    shard.open()
    slab = SlabTier(os.path.join(directory, "contract.slab"), layout, 64).open()
    chain = SlabChain(slab, shard.tier("contract", layout))

    def cleanup() -> None:
        chain.close()
        shard.close()

    return chain, cleanup


TIER_FACTORIES: dict[str, TierFactory] = {
    "dram": _dram,
    "rocksdb": _rocksdb,
    "slab": _slab,
    "slab+rocksdb": _slab_over_rocksdb,
}
