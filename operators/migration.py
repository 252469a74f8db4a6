"""TierMigration: age the LFU counts, then swap hot cold rows into DRAM and cold hot rows out.

Each run reads every table's hit counters, so it can report the hit ratio of the windows
around the previous migration::

    ──── window A ────┤ migration k-1 ├──── window B ────┤ migration k (this run)
    hit_ratio_before = ratio over A          hit_ratio_after = ratio over B

``hit_ratio_after`` > ``hit_ratio_before`` when the previous migration followed a drift of
the hot set. (Aging first makes yesterday's hot ids cool down before the swap decision.)

>>> import tempfile, numpy as np
>>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
>>> from operators.base import OperatorContext
>>> from operators.metrics import MetricsRegistry
>>> with tempfile.TemporaryDirectory() as d:
...     with EmbeddingStore(StoreConfig(d, (TableConfig("t", 2, hot_rows=4),), 1)) as store:
...         _ = store.lookup("t", np.arange(10, dtype=np.int64)); store.end_step()
...         report = TierMigration().run(OperatorContext(store, MetricsRegistry()))
>>> report.operator, report.details["hit_ratio_after"]
('tier_migration', 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass

from embedding_store import TableStats
from operators import failpoints
from operators.base import Detail, Operator, OperatorContext, OperatorResult


@dataclass(frozen=True)
class _Counts:
    lookups: int
    cold_reads: int

    @classmethod
    def of(cls, stats: TableStats) -> _Counts:
        return cls(stats.lookups, stats.cold_reads)

    def ratio_since(self, earlier: _Counts) -> float | None:
        lookups = self.lookups - earlier.lookups
        if lookups <= 0:
            return None
        return max(0.0, 1.0 - (self.cold_reads - earlier.cold_reads) / lookups)


class TierMigration(Operator):
    """``store.age()`` (optional) then ``store.migrate()``; reports hit ratios and rows moved.

    ``scan_limit`` bounds the cold rows each shard scans per run (None: all).
    """

    name = "tier_migration"

    def __init__(self, age: bool = True, scan_limit: int | None = None) -> None:
        self.age = age
        self.scan_limit = scan_limit
        self._last: dict[str, _Counts] | None = None
        self._last_window: float | None = None

    def _counts(self, context: OperatorContext) -> dict[str, _Counts]:
        return {t.name: _Counts.of(context.store.stats(t.name)) for t in context.store.tables}

    def execute(self, context: OperatorContext) -> OperatorResult:
        """Age, migrate, and report."""
        store, metrics = context.store, context.metrics
        now = self._counts(context)
        details: dict[str, Detail] = {}
        total_now = _Counts(
            sum(c.lookups for c in now.values()), sum(c.cold_reads for c in now.values())
        )
        if self._last is not None:
            total_then = _Counts(
                sum(c.lookups for c in self._last.values()),
                sum(c.cold_reads for c in self._last.values()),
            )
            window = total_now.ratio_since(total_then)
            for name, counts in now.items():
                ratio = counts.ratio_since(self._last.get(name, _Counts(0, 0)))
                if ratio is not None:
                    metrics.set("store_window_hit_ratio", ratio, table=name)
        else:
            window = total_now.ratio_since(_Counts(0, 0))
        if window is not None:
            details["hit_ratio_after"] = window
            metrics.set("tier_migration_hit_ratio_after", window)
        if self._last_window is not None:
            details["hit_ratio_before"] = self._last_window
            metrics.set("tier_migration_hit_ratio_before", self._last_window)
        if self.age:
            store.age()
        failpoints.hit("migration")
        report = store.migrate(self.scan_limit)
        failpoints.hit("migration_done")
        self._last = self._counts(context)
        self._last_window = window if window is not None else self._last_window
        details.update(promoted=report.promoted, demoted=report.demoted)
        metrics.inc("tier_migration_promoted_total", report.promoted)
        metrics.inc("tier_migration_demoted_total", report.demoted)
        return OperatorResult(rows=report.promoted + report.demoted, details=details)
