"""Expiry: delete rows not seen within their table's expiry, and count the tombstones.

The store records the tombstones itself (the next incremental checkpoint and delta publish
carry them); this operator runs ``store.expire()`` and reports how many ids each table lost.

>>> import tempfile, numpy as np
>>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
>>> from operators.base import OperatorContext
>>> from operators.metrics import MetricsRegistry
>>> table = TableConfig("t", 2, expire_after_steps=1)
>>> with tempfile.TemporaryDirectory() as d:
...     with EmbeddingStore(StoreConfig(d, (table,), 1)) as store:
...         _ = store.lookup("t", np.arange(5, dtype=np.int64)); store.end_step()
...         _ = store.lookup("t", np.arange(2, dtype=np.int64)); store.end_step()
...         _ = store.lookup("t", np.arange(2, dtype=np.int64)); store.end_step()
...         report = Expiry().run(OperatorContext(store, MetricsRegistry()))
>>> report.rows, report.details["tombstones.t"]
(3, 3)
"""

from __future__ import annotations

from operators.base import Detail, Operator, OperatorContext, OperatorResult


class Expiry(Operator):
    """``store.expire()``; reports tombstones per table (``tombstones.<table>``)."""

    name = "expiry"

    def execute(self, context: OperatorContext) -> OperatorResult:
        """Expire and count."""
        expired = context.store.expire()
        details: dict[str, Detail] = {}
        total = 0
        for table, ids in sorted(expired.items()):
            details[f"tombstones.{table}"] = len(ids)
            context.metrics.inc("expiry_tombstones_total", len(ids), table=table)
            total += len(ids)
        details["version"] = context.store.version
        return OperatorResult(rows=total, details=details)
