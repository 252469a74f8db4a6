"""The registry of tier implementations, for the contract tests and for tier chains.

Each factory takes a scratch directory and a row layout and returns an open tier plus a
cleanup function. A new tier (GPU, SSD, remote) adds itself here and
``tests/contracts/test_tier_contract.py`` checks it with no further change.

>>> sorted(TIER_FACTORIES)
['dram', 'rocksdb']
"""

from __future__ import annotations

import os
from collections.abc import Callable

from embedding_store.dram import DramTier
from embedding_store.rocks import RocksShard
from embedding_store.rows import RowLayout
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


TIER_FACTORIES: dict[str, TierFactory] = {"dram": _dram, "rocksdb": _rocksdb}
