"""``freshet bench sweep``: samples/s and hit ratio of the tiered store over DRAM budgets
(1%, 5%, 10%, 25%, 100% of the ids) and Zipf exponents (0.8, 1.05, 1.2).

::

    parent: one store directory holding a row for every id (imported once, untimed)
      for each Zipf exponent: generate its batches
        for each budget: a fresh worker process opens that directory with hot_rows = budget,
                         loads the budget's most popular ids, warms up, times >= 5 windows
    ─► FILE.json (one point per exponent x budget) + FILE.png

The DRAM hit ratio is the share of a batch's unique ids already in DRAM when prefetch (or
the lookup) first asked for them; the lookup hit ratio is near 1 because prefetch loads
the rest before the step.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import run_header
from benchmarks.runner import run_worker
from benchmarks.store_bench import Timing, add_size_arguments
from benchmarks.systems.freshet import build_store
from benchmarks.worker import RunSpec
from benchmarks.workload import Workload, ZipfSampler, generate, unique_per_batch

log = logging.getLogger(__name__)

BUDGETS = (0.01, 0.05, 0.10, 0.25, 1.0)
ALPHAS = (0.8, 1.05, 1.2)


def default_setup(quick: bool) -> tuple[Workload, Timing]:
    """Full: the 10M ids of DESIGN.md; quick: 1M ids and batches of 1024, fewer steps.

    A budget below the rows pinned by the batches in flight (about ``1 + lookahead`` batches
    of unique ids) cannot hold, so the quick sweep shrinks the batch with the id space.
    """
    if quick:
        timing = Timing(warmup=2, windows=5, steps_per_window=1)
        return Workload(num_ids=1_000_000, batch=1024, steps=timing.steps), timing
    timing = Timing(warmup=3, windows=5, steps_per_window=2)
    return Workload(num_ids=10_000_000, steps=timing.steps), timing


def run_sweep(
    out: Path, quick: bool, workload: Workload, timing: Timing,
    budgets: tuple[float, ...] = BUDGETS, alphas: tuple[float, ...] = ALPHAS,
    lookahead: int = 2, scratch: Path | None = None,
) -> dict[str, Any]:
    """Run every (alpha, budget) point; write ``out`` and its PNG; returns the result."""
    from benchmarks.plot import plot_sweep
    from benchmarks.report import write_json

    result = run_header("sweep", quick)
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="freshet-sweep-", dir=scratch) as tmp:
        root = Path(tmp)
        store_path = root / "store"
        log.info("importing %d rows ...", workload.num_ids)
        build_store(store_path, workload)
        for alpha in alphas:
            w = replace(workload, alpha=alpha)
            sampler = ZipfSampler(w.num_ids, alpha, w.seed)
            batches = generate(w, sampler)
            data = batches.save(root / f"data-{alpha}")
            ranked = str(root / f"data-{alpha}" / "ranked.npy")
            np.save(ranked, sampler.ids_by_rank())
            uniq = unique_per_batch(batches)
            for budget in budgets:
                label = f"zipf{alpha}-budget{budget:g}"
                spec = RunSpec(
                    label, "freshet", w, data, ranked, str(root / label), timing.warmup,
                    timing.windows, timing.steps_per_window,
                    {"hot_fraction": budget, "lookahead": lookahead, "prewarm": "hot",
                     "store_path": str(store_path)},
                )
                r = run_worker(spec)
                points.append({
                    "alpha": alpha,
                    "hot_fraction": budget,
                    "hot_rows": r["info"]["hot_budget_rows"],
                    "hot_rows_at_end": r["info"]["hot_rows"],
                    "zipf_mass_of_budget": sampler.mass_of_top(int(w.num_ids * budget)),
                    "unique_ids_per_batch": uniq,
                    **{k: r.get(k) for k in (
                        "samples_per_s", "samples_per_s_min", "samples_per_s_max",
                        "hit_ratio", "dram_hit_ratio", "prefetch_stall_ms_per_step",
                        "peak_rss_bytes", "train_peak_rss_bytes", "prepare_seconds",
                    )},
                })
                log.info("%s: %.0f samples/s, DRAM hit %.3f", label, r["samples_per_s"],
                         r["dram_hit_ratio"] or 0.0)
    result.update(
        workload={**workload.to_json(), "alpha": list(alphas)},
        timing=asdict(timing),
        budgets=list(budgets),
        lookahead=lookahead,
        points=points,
        notes=[
            "Freshet tiered store, 4 shards, row-wise Adagrad, look-ahead prefetch; each point in "
            "a fresh process reopening one store directory that holds a row for every id",
            "before timing, each point loads its budget's most popular ids into DRAM (where LFU "
            "settles), then warms up",
            "dram_hit_ratio: unique ids already in DRAM before prefetch or lookup read RocksDB; "
            "hit_ratio: store.stats lookup hits (prefetch has loaded the rest by then)",
            "rows of the batch in training and of the prefetched batches are pinned, so DRAM "
            "never holds fewer than about (1 + lookahead) batches of unique ids; a smaller "
            "budget is exceeded (see hot_rows_at_end) and its hit ratio is set by the overlap "
            "of consecutive batches",
        ],
    )
    write_json(result, out)
    plot_sweep(result, out.with_suffix(".png"))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``freshet bench sweep``."""
    add_size_arguments(parser)
    parser.add_argument("--budgets", type=float, nargs="+", help="DRAM budgets, fractions of ids")
    parser.add_argument("--alphas", type=float, nargs="+", help="Zipf exponents")
    parser.add_argument("--lookahead", type=int, default=2, help="batches prefetched ahead")


def run(args: argparse.Namespace) -> int:
    """``freshet bench sweep``."""
    from benchmarks.store_bench import apply_overrides

    workload, timing = apply_overrides(*default_setup(args.quick), args)
    out = Path(args.out)
    result = run_sweep(
        out, args.quick, workload, timing, tuple(args.budgets or BUDGETS),
        tuple(args.alphas or ALPHAS), args.lookahead, Path(args.scratch) if args.scratch else None,
    )
    print(f"{'zipf':>5} {'budget':>7} {'samples/s':>10} {'dram hit':>9} {'stall ms/step':>14}")
    for p in result["points"]:
        print(f"{p['alpha']:>5} {p['hot_fraction']:>7.0%} {p['samples_per_s']:>10.0f} "
              f"{p['dram_hit_ratio']:>9.3f} {p['prefetch_stall_ms_per_step']:>14.1f}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
