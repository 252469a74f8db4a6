"""MetricsReport: copy the store's counters into gauges and log one summary line.

Gauges per table: ``store_hot_rows``, ``store_hit_ratio`` (cumulative), ``store_lookups``,
``store_evicted``, ``store_written_back``, ``store_prefetched`` (and ``store_cold_rows``
with ``count_cold``, which iterates RocksDB keys); plus ``store_version``.

>>> import tempfile, numpy as np
>>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
>>> from operators.base import OperatorContext
>>> from operators.metrics import MetricsRegistry
>>> with tempfile.TemporaryDirectory() as d:
...     with EmbeddingStore(StoreConfig(d, (TableConfig("t", 2),), 1)) as store:
...         _ = store.lookup("t", np.arange(5, dtype=np.int64)); store.end_step()
...         ctx = OperatorContext(store, MetricsRegistry())
...         report = MetricsReport().run(ctx)
>>> ctx.metrics.get("store_hot_rows", table="t"), report.details["t.lookups"]
(5.0, 5)
"""

from __future__ import annotations

from operators.base import Detail, Operator, OperatorContext, OperatorResult


class MetricsReport(Operator):
    """Store counters into gauges, and a summary in the report and log line."""

    name = "metrics_report"

    def __init__(self, count_cold: bool = False) -> None:
        self.count_cold = count_cold

    def execute(self, context: OperatorContext) -> OperatorResult:
        """Read every table's stats."""
        store, metrics = context.store, context.metrics
        details: dict[str, Detail] = {"version": store.version}
        metrics.set("store_version", store.version)
        for t in store.tables:
            s = store.stats(t.name, count_cold=self.count_cold)
            gauges: dict[str, float] = {
                "store_hot_rows": s.hot_rows,
                "store_hit_ratio": s.hit_ratio,
                "store_lookups": s.lookups,
                "store_evicted": s.evicted,
                "store_written_back": s.written_back,
                "store_prefetched": s.prefetched,
            }
            if s.cold_rows is not None:
                gauges["store_cold_rows"] = s.cold_rows
                details[f"{t.name}.cold_rows"] = s.cold_rows
            for name, value in gauges.items():
                metrics.set(name, value, table=t.name)
            details[f"{t.name}.hot_rows"] = s.hot_rows
            details[f"{t.name}.hit_ratio"] = round(s.hit_ratio, 4)
            details[f"{t.name}.lookups"] = s.lookups
        return OperatorResult(details=details)
