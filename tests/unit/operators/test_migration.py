"""TierMigration makes the DRAM-resident set follow a drifting hot set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.base import OperatorContext, OperatorReport, Outcome
from operators.metrics import MetricsRegistry
from operators.migration import TierMigration

HOT_A = np.arange(100, dtype=np.int64)
HOT_B = np.arange(1000, 1100, dtype=np.int64)


def drifting_run(path: Path, migrate_every: int | None) -> dict[str, object]:
    """60 steps on hot set A, then 60 on B (90% of ids hot); hit ratio per 30-step window."""
    rng = np.random.default_rng(0)
    table = TableConfig("t", 4, OptimizerConfig("sgd", lr=0.1), hot_rows=120)
    reports: list[OperatorReport] = []
    with EmbeddingStore(StoreConfig(str(path), (table,), num_shards=2)) as store:
        op = TierMigration()
        ctx = OperatorContext(store, MetricsRegistry())

        def window(hot: np.ndarray, steps: int) -> float:
            s0 = store.stats("t")
            for k in range(steps):
                cold = rng.integers(0, 5000, 64)
                ids = np.where(rng.random(64) < 0.9, rng.choice(hot, 64), cold).astype(np.int64)
                store.lookup("t", ids)
                store.apply_gradients("t", ids, np.zeros((64, 4), np.float32))
                store.end_step()
                with store.step_boundary():  # wait for the background eviction: no timing in it
                    pass
                if migrate_every and (k + 1) % migrate_every == 0:
                    reports.append(op.run(ctx))
            s1 = store.stats("t")
            return 1 - (s1.cold_reads - s0.cold_reads) / (s1.lookups - s0.lookups)

        ratios = [window(HOT_A, 30), window(HOT_A, 30), window(HOT_B, 30), window(HOT_B, 30)]
        s0 = store.stats("t")
        store.lookup("t", HOT_B, pin=False)
        resident = (store.stats("t").hits - s0.hits) / len(HOT_B)
    return {"ratios": ratios, "resident": resident, "reports": reports, "metrics": ctx.metrics}


def test_migration_follows_the_drift(tmp_path: Path) -> None:
    with_op = drifting_run(tmp_path / "with", migrate_every=5)
    without = drifting_run(tmp_path / "without", migrate_every=None)
    r_with, r_without = with_op["ratios"], without["ratios"]
    assert isinstance(r_with, list) and isinstance(r_without, list)
    # before the drift both placements serve the hot set from DRAM
    assert r_with[1] > 0.8 and r_without[1] > 0.8
    # after it, only aging + migration brings the new hot set into DRAM
    assert r_with[3] > r_without[3] + 0.3, (r_with, r_without)
    assert r_with[3] > 0.8
    assert with_op["resident"] >= 0.9 > 0.8 > without["resident"]  # type: ignore[operator]

    reports = with_op["reports"]
    assert isinstance(reports, list) and len(reports) == 24
    assert all(r.outcome is Outcome.DONE for r in reports)
    assert "hit_ratio_before" not in reports[0].details
    after_drift = reports[12:]
    assert sum(r.rows for r in after_drift) > 50  # rows moved between tiers
    assert sum(int(r.details["promoted"]) for r in after_drift) > 0
    # the last run sees the recovered ratio, higher than right after the drift
    assert float(reports[-1].details["hit_ratio_after"]) > 0.8
    assert float(reports[12].details["hit_ratio_after"]) < float(
        reports[-1].details["hit_ratio_after"]
    )
    metrics = with_op["metrics"]
    assert isinstance(metrics, MetricsRegistry)
    assert metrics.get("operator_runs_total", operator="tier_migration", outcome="done") == 24
    assert metrics.get("tier_migration_promoted_total") == sum(
        int(r.details["promoted"]) for r in reports
    )
