"""``freshet bench sweep``: samples/s and hit ratio of the tiered store over DRAM budgets
(1%, 5%, 10%, 25%, 100% of the ids) and Zipf exponents (0.8, 1.05, 1.2).

::

    parent: generate every exponent's batches (one stream, exponent after exponent)
            import a row for every id into one store directory (untimed)
      └─ one worker per budget, on a hard-linked copy of that directory, loads the budget's
         most popular ids, then for each exponent: warm-up, >= 5 timed windows (in turn
         with the other budgets' windows, see benchmarks.runner)
    ─► FILE.json (one point per exponent x budget) + FILE.png

``hit_ratio`` is the share of looked-up ids served without reading RocksDB (a prefetch
read counts as a miss), as ``TableStats.hit_ratio``; ``step_hit_ratio`` is near 1 because
prefetch has loaded the rest before the step.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import run_header
from benchmarks.runner import Segment, Timing, run_interleaved
from benchmarks.store_bench import add_size_arguments, apply_overrides
from benchmarks.systems.freshet import build_store, clone_store
from benchmarks.worker import RunSpec
from benchmarks.workload import Batches, Workload, ZipfSampler, generate, unique_per_batch

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


def prepare_batches(
    workload: Workload, alphas: tuple[float, ...], root: Path
) -> tuple[dict[str, str], str, dict[float, dict[str, Any]]]:
    """Every exponent's batches, one after another in one stream; ids by popularity.

    The rank -> id permutation depends only on the seed, so the most popular ids (the hot
    set each budget loads) are the same for every exponent.
    """
    parts, info = [], {}
    ranked = None
    for alpha in alphas:
        sampler = ZipfSampler(workload.num_ids, alpha, workload.seed)
        b = generate(replace(workload, alpha=alpha), sampler)
        parts.append(b)
        info[alpha] = {"sampler": sampler, "unique_ids_per_batch": unique_per_batch(b)}
        ranked = sampler.ids_by_rank() if ranked is None else ranked
    stream = Batches(
        np.concatenate([b.ids for b in parts]), np.concatenate([b.labels for b in parts])
    )
    paths = stream.save(root / "data")
    ranked_path = str(root / "data" / "ranked.npy")
    np.save(ranked_path, ranked)
    return paths, ranked_path, info


def run_sweep(
    out: Path,
    quick: bool,
    workload: Workload,
    timing: Timing,
    budgets: tuple[float, ...] = BUDGETS,
    alphas: tuple[float, ...] = ALPHAS,
    lookahead: int = 2,
    scratch: Path | None = None,
) -> dict[str, Any]:
    """Run every (alpha, budget) point; write ``out`` and its PNG; returns the result."""
    from benchmarks.plot import plot_sweep
    from benchmarks.report import write_json

    result = run_header("sweep", quick)
    with tempfile.TemporaryDirectory(prefix="freshet-sweep-", dir=scratch) as tmp:
        root = Path(tmp)
        data, ranked, info = prepare_batches(workload, alphas, root)
        log.info("importing a row for each of %d ids ...", workload.num_ids)
        build_store(root / "base", workload)
        stream = replace(workload, steps=timing.steps * len(alphas))
        specs = []
        for budget in budgets:
            label = f"budget{budget:g}"
            store_path = root / label / "store"
            clone_store(root / "base", store_path)
            specs.append(
                RunSpec(
                    label,
                    "freshet",
                    stream,
                    data,
                    ranked,
                    str(root / label),
                    timing.steps_per_window,
                    {
                        "hot_fraction": budget,
                        "lookahead": lookahead,
                        "prewarm": "hot",
                        "store_path": str(store_path),
                    },
                )
            )
        segments = [Segment(f"zipf{a}", timing.warmup, timing.windows) for a in alphas]
        raw = run_interleaved(specs, segments)
    points = []
    for budget, spec in zip(budgets, specs, strict=True):
        r = raw[spec.label]
        for alpha, seg in zip(alphas, segments, strict=True):
            p = r["segments"][seg.name]
            points.append(
                {
                    "alpha": alpha,
                    "hot_fraction": budget,
                    "hot_rows": r["info"]["hot_budget_rows"],
                    "hot_rows_at_end": r["info"]["hot_rows"],
                    "zipf_mass_of_budget": info[alpha]["sampler"].mass_of_top(
                        int(workload.num_ids * budget)
                    ),
                    "unique_ids_per_batch": info[alpha]["unique_ids_per_batch"],
                    "peak_rss_bytes": r["peak_rss_bytes"],
                    "prepare_seconds": r["prepare_seconds"],
                    **{
                        k: p.get(k)
                        for k in (
                            "samples_per_s",
                            "samples_per_s_min",
                            "samples_per_s_max",
                            "samples_per_cpu_s",
                            "window_samples_per_s",
                            "hit_ratio",
                            "step_hit_ratio",
                            "prefetch_stall_ms_per_step",
                            "off_clock_cpu_seconds",
                        )
                    },
                }
            )
    result.update(
        workload={**workload.to_json(), "alpha": list(alphas)},
        timing=asdict(timing),
        budgets=list(budgets),
        lookahead=lookahead,
        points=points,
        notes=[
            "Freshet tiered store, 4 shards, row-wise Adagrad, look-ahead prefetch; one worker "
            "process per budget, each on a hard-linked copy of one directory holding a row for "
            "every id; the workers' windows are taken in turn",
            "each worker loads its budget's most popular ids into DRAM (where LFU settles), then "
            "trains the exponents one after another: per exponent, warm-up then timed windows",
            "hit_ratio: share of looked-up ids served without reading RocksDB (prefetch reads "
            "count as misses), as TableStats.hit_ratio; step_hit_ratio: share in DRAM at lookup",
            "rows of the batch in training and of the prefetched batches are pinned, so DRAM "
            "never holds fewer than about (1 + lookahead) batches of unique ids; a smaller "
            "budget is exceeded (see hot_rows_at_end) and its hit ratio is set by the overlap "
            "of consecutive batches",
        ],
    )
    result["load_average_end"] = list(os.getloadavg())
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
    workload, timing = apply_overrides(*default_setup(args.quick), args)
    out = Path(args.out)
    result = run_sweep(
        out,
        args.quick,
        workload,
        timing,
        tuple(args.budgets or BUDGETS),
        tuple(args.alphas or ALPHAS),
        args.lookahead,
        Path(args.scratch) if args.scratch else None,
    )
    print(
        f"{'zipf':>5} {'budget':>7} {'samples/s':>10} {'hit':>6} {'step hit':>8} "
        f"{'stall ms/step':>14} {'hot rows at end':>16}"
    )
    for p in result["points"]:
        print(
            f"{p['alpha']:>5} {p['hot_fraction']:>7.0%} {p['samples_per_s']:>10.0f} "
            f"{p['hit_ratio']:>6.3f} {p['step_hit_ratio']:>8.3f} "
            f"{p['prefetch_stall_ms_per_step']:>14.1f} {p['hot_rows_at_end']:>16,}"
        )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
