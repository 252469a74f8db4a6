"""Freshet's tiered embedding store: DRAM over RocksDB, sharded, with fused sparse optimizers.

The core imports torch, numpy, pandas (its hash table) and rocksdict only.

>>> import tempfile, numpy as np
>>> with tempfile.TemporaryDirectory() as d:
...     with EmbeddingStore(StoreConfig(d, (TableConfig("ads", dim=8),))) as store:
...         store.lookup("ads", np.array([1, 2], dtype=np.int64)).shape
torch.Size([2, 8])
"""

from embedding_store.config import OptimizerConfig, StoreConfig, TableConfig, Unadmitted
from embedding_store.errors import (
    ConfigError,
    EmbeddingStoreError,
    InvalidIdsError,
    SchemaMismatchError,
    ShapeError,
    StorageError,
    StoreClosedError,
    StoreNotOpenError,
    UnknownTableError,
)
from embedding_store.module import StoreEmbeddingBag
from embedding_store.prefetch import PrefetchTicket
from embedding_store.store import EmbeddingStore, MigrationReport, TableStats

__all__ = [
    "ConfigError",
    "EmbeddingStore",
    "EmbeddingStoreError",
    "InvalidIdsError",
    "MigrationReport",
    "OptimizerConfig",
    "PrefetchTicket",
    "SchemaMismatchError",
    "ShapeError",
    "StorageError",
    "StoreClosedError",
    "StoreConfig",
    "StoreEmbeddingBag",
    "StoreNotOpenError",
    "TableConfig",
    "TableStats",
    "Unadmitted",
    "UnknownTableError",
]
