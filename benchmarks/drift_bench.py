"""``freshet bench drift``: scheduled migration makes DRAM follow a drifting hot set.

A Zipf stream whose popular ids shift to a new range halfway; the tiered store (DRAM budget
of 5% of the ids) runs with TierMigration (aging + migration) every ``--every`` steps and
without it; the hot-tier hit ratio of each window of steps is plotted for both.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options (``--quick``/``--out`` come from ``freshet bench``)."""
    parser.add_argument("--every", type=int, default=10, help="steps between migrations")


def _run(path: str, every: int | None, steps: int, vocab: int, window: int) -> list[float]:
    from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
    from operators.base import OperatorContext
    from operators.metrics import MetricsRegistry
    from operators.migration import TierMigration
    from pipeline.events.generators import zipf_sampler

    rng = np.random.default_rng(0)
    cdf, _ = zipf_sampler(vocab, 1.1, np.random.default_rng(1))  # ranks, built once
    table = TableConfig("t", 16, OptimizerConfig("sgd", lr=0.1), hot_rows=vocab // 20)
    ratios: list[float] = []
    with EmbeddingStore(StoreConfig(path, (table,), num_shards=2)) as store:
        op, ctx = TierMigration(), OperatorContext(store, MetricsRegistry())
        s0 = store.stats("t")
        for step in range(steps):
            shift = 0 if step < steps // 2 else vocab // 2  # the popular ids move halfway
            ranks = np.searchsorted(cdf, rng.random(2048)).astype(np.int64)
            ids = (ranks + shift) % vocab
            store.lookup("t", ids)
            store.apply_gradients("t", ids, np.zeros((len(ids), 16), np.float32))
            store.end_step()
            if every and (step + 1) % every == 0:
                op.run(ctx)
            if (step + 1) % window == 0:
                s1 = store.stats("t")
                ratios.append(1 - (s1.cold_reads - s0.cold_reads) / (s1.lookups - s0.lookups))
                s0 = s1
    return ratios


def run(args: argparse.Namespace) -> int:
    """Both runs, JSON and PNG."""
    steps, vocab, window = (200, 20_000, 10) if args.quick else (600, 200_000, 20)
    with tempfile.TemporaryDirectory() as tmp:
        with_op = _run(f"{tmp}/a", args.every, steps, vocab, window)
        without = _run(f"{tmp}/b", None, steps, vocab, window)
    half = len(with_op) // 2
    out: dict[str, Any] = {
        "steps": steps,
        "ids": vocab,
        "dram_budget_rows": vocab // 20,
        "window_steps": window,
        "migrate_every_steps": args.every,
        "hit_ratio_per_window": {"with_migration": with_op, "without": without},
        "mean_after_drift": {
            "with_migration": float(np.mean(with_op[half + 2 :])),
            "without": float(np.mean(without[half + 2 :])),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = [(i + 1) * window for i in range(len(with_op))]
    ax.plot(x, with_op, label=f"migration + aging every {args.every} steps")
    ax.plot(x, without, label="no migration")
    ax.axvline(steps // 2, color="grey", linestyle="--", label="popular ids drift")
    ax.set_xlabel("training step")
    ax.set_ylabel("hot-tier hit ratio (per window)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=100)
    plt.close(fig)
    print(json.dumps(out["mean_after_drift"], indent=2))
    return 0
