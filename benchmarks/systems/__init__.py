"""The systems under test, by kind; each runs in its own process (see ``benchmarks.worker``).

>>> sorted(SYSTEMS)
['dense_only', 'freshet', 'naive_rocksdb', 'torch_embeddingbag']
"""

from __future__ import annotations

import importlib
from typing import Any

from benchmarks.systems.base import BenchSystem, SystemContext

SYSTEMS: dict[str, str] = {
    "freshet": "benchmarks.systems.freshet:FreshetSystem",
    "torch_embeddingbag": "benchmarks.systems.torch_bag:TorchBagSystem",
    "naive_rocksdb": "benchmarks.systems.naive_rocks:NaiveRocksSystem",
    "dense_only": "benchmarks.systems.dense_only:DenseOnlySystem",
}


def build(kind: str, ctx: SystemContext, options: dict[str, Any]) -> BenchSystem:
    """A system of ``kind`` over ``ctx``, constructed with ``options``."""
    try:
        module, cls = SYSTEMS[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown system kind {kind!r}; known: {sorted(SYSTEMS)}") from None
    system: BenchSystem = getattr(importlib.import_module(module), cls)(ctx, **options)
    return system
