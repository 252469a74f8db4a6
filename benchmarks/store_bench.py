"""``freshet bench store``: Freshet tiered vs all-DRAM vs torch EmbeddingBag vs naive RocksDB.

::

    parent: generate the Zipf batches once (untimed) ─► ids.npy, labels.npy, ranked.npy
            import a row for every id into one Freshet store directory (untimed)
      └─ four worker processes, one per system, prepare side by side (pre-warm every id)
         warm-up, then >= 5 timed windows each, taken in turn (benchmarks.runner)
    parent: ratios against the targets ─► FILE.json + FILE.png, a printed summary

Targets (issue 2, same run): tiered >= 1.0x torch EmbeddingBag and >= 5x naive offloading
in samples/s; tiered peak RSS <= 30% of Freshet all-DRAM. A fifth process trains the dense
MLP alone (``dense_only``): no system can beat it, so each samples/s target also reports the
samples/s it asks of the tiered store against that ceiling.

Issue 18's targets (same run): the 3-tier store (DRAM 10% -> slab -> RocksDB) >= 0.95x
all-DRAM and >= 1.0x torch in samples/s, at peak RSS <= 0.30x all-DRAM's. That RSS is anon
(RssAnon + RssShmem, sampled): the slab's mapped file pages are page cache, reported apart,
and the VmHWM ratio that counts them stays beside it. Ant's headline: the fastest tiered
store within 0.5x all-DRAM's anon peak reaches >= 0.98x all-DRAM (``freshet_3tier_wide``
adds a DRAM 25% point).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import run_header
from benchmarks.runner import Segment, Timing, run_interleaved
from benchmarks.systems.freshet import build_store, clone_store
from benchmarks.worker import RunSpec
from benchmarks.workload import Workload, ZipfSampler, generate, unique_per_batch

log = logging.getLogger(__name__)

TIERED, DRAM, TORCH, NAIVE = "freshet_tiered", "freshet_dram", "torch_embeddingbag", "naive_rocksdb"
DENSE = "dense_only"
THREE = "freshet_3tier"
THREE_WIDE = "freshet_3tier_wide"  # the same chain with a wider DRAM budget (Ant's headline)
SEGMENT = "main"
ANON = "peak_rss_anon_bytes"


@dataclass(frozen=True)
class Target:
    """``numerator / denominator`` of ``metric`` must be ``>=`` or ``<=`` ``bound``."""

    name: str
    numerator: str
    denominator: str
    metric: str
    op: str
    bound: float

    def check(self, systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The measured ratio, whether the target is met, and (for rates) per-window ratios."""
        a, b = systems[self.numerator], systems[self.denominator]
        ratio = a[self.metric] / b[self.metric]
        met = ratio >= self.bound if self.op == ">=" else ratio <= self.bound
        out = {**asdict(self), "ratio": ratio, "met": bool(met)}
        if self.metric == "samples_per_s":
            paired = [x / y for x, y in zip(a["window_samples_per_s"], b["window_samples_per_s"],
                                            strict=True)]
            out["median_of_paired_window_ratios"] = statistics.median(paired)
            if self.op == ">=" and DENSE in systems:
                out.update(ceiling(self.bound * b[self.metric], systems[DENSE][self.metric]))
        return out


def ceiling(needed: float, dense_only: float) -> dict[str, Any]:
    """What a samples/s target asks of the tiered store, against the MLP alone in the same run.

    >>> ceiling(41_000.0, 40_000.0)["above_ceiling"]
    True
    """
    return {
        "needs_samples_per_s": needed,
        "dense_only_samples_per_s": dense_only,
        "needs_vs_dense_only": needed / dense_only,
        "above_ceiling": needed > dense_only,
    }


TARGETS = (
    Target("tiered vs torch EmbeddingBag, samples/s", TIERED, TORCH, "samples_per_s", ">=", 1.0),
    Target("tiered vs naive RocksDB, samples/s", TIERED, NAIVE, "samples_per_s", ">=", 5.0),
    Target("tiered vs Freshet all-DRAM, peak RSS", TIERED, DRAM, "peak_rss_bytes", "<=", 0.30),
    # issue 18: DRAM -> slab -> RocksDB, the slab holding the rows DRAM does not
    Target("3-tier vs Freshet all-DRAM, samples/s", THREE, DRAM, "samples_per_s", ">=", 0.95),
    Target("3-tier vs torch EmbeddingBag, samples/s", THREE, TORCH, "samples_per_s", ">=", 1.0),
    # the slab's memory map puts its pages in RssFile (page cache the kernel may take back;
    # RocksDB's SST files sit in the page cache too, unmapped, and never counted): the target
    # counts the memory the process cannot give back (anon + shmem, sampled peak)
    Target("3-tier vs Freshet all-DRAM, peak RSS anon (memory the process cannot give back)",
           THREE, DRAM, ANON, "<=", 0.30),
    # the metric before, file pages of the slab's memory map included (VmHWM)
    Target("3-tier vs Freshet all-DRAM, peak RSS incl. mapped slab pages (VmHWM)", THREE, DRAM,
           "peak_rss_bytes", "<=", 0.30),
)
HEADLINE_RSS, HEADLINE_SPEED = 0.5, 0.98
INFO_RATIOS = (
    ("tiered vs Freshet all-DRAM, samples/s", TIERED, DRAM, "samples_per_s"),
    ("tiered vs Freshet all-DRAM, peak RSS of the training phase", TIERED, DRAM,
     "train_peak_rss_bytes"),
    ("Freshet all-DRAM vs torch EmbeddingBag, samples/s", DRAM, TORCH, "samples_per_s"),
    ("tiered vs torch EmbeddingBag, samples per CPU-second", TIERED, TORCH, "samples_per_cpu_s"),
    ("tiered vs naive RocksDB, samples per CPU-second", TIERED, NAIVE, "samples_per_cpu_s"),
    ("tiered vs the dense MLP alone (the ceiling), samples/s", TIERED, DENSE, "samples_per_s"),
    ("torch EmbeddingBag vs the dense MLP alone, samples/s", TORCH, DENSE, "samples_per_s"),
    ("3-tier vs tiered (DRAM over RocksDB), samples/s", THREE, TIERED, "samples_per_s"),
    ("3-tier vs Freshet all-DRAM, peak RSS of the training phase", THREE, DRAM,
     "train_peak_rss_bytes"),
    ("tiered vs Freshet all-DRAM, peak RSS anon", TIERED, DRAM, ANON),
    ("3-tier vs Freshet all-DRAM, peak RSS file pages", THREE, DRAM, "peak_rss_file_bytes"),
    ("3-tier (wide DRAM) vs Freshet all-DRAM, samples/s", THREE_WIDE, DRAM, "samples_per_s"),
    ("3-tier (wide DRAM) vs Freshet all-DRAM, peak RSS anon", THREE_WIDE, DRAM, ANON),
    ("3-tier vs Freshet all-DRAM, peak RSS anon of the training phase", THREE, DRAM,
     "train_peak_rss_anon_bytes"),
)


def headline(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ant's headline: of the tiered stores whose peak RSS (anon) is <= 0.5x all-DRAM's,
    the fastest must reach >= 0.98x all-DRAM's samples/s.

    >>> s = {DRAM: {"samples_per_s": 100.0, ANON: 10.0, "window_samples_per_s": [100.0]},
    ...      THREE: {"samples_per_s": 97.0, ANON: 3.0, "window_samples_per_s": [97.0]},
    ...      THREE_WIDE: {"samples_per_s": 99.0, ANON: 6.0, "window_samples_per_s": [99.0]}}
    >>> h = headline(s); h["system"], h["met"]
    ('freshet_3tier', False)
    """
    dram = systems[DRAM]
    out: dict[str, Any] = {
        "name": f"at the DRAM budget whose peak RSS anon <= {HEADLINE_RSS}x all-DRAM, "
                f"samples/s >= {HEADLINE_SPEED}x all-DRAM",
        "op": ">=", "bound": HEADLINE_SPEED, "rss_bound": HEADLINE_RSS, "metric": "samples_per_s",
        "candidates": {},
    }
    best: tuple[float, str] | None = None
    for label in (TIERED, THREE, THREE_WIDE):
        s = systems.get(label)
        if s is None or s.get(ANON) is None or not dram.get(ANON):
            continue
        rss, speed = s[ANON] / dram[ANON], s["samples_per_s"] / dram["samples_per_s"]
        out["candidates"][label] = {"rss_ratio": rss, "samples_ratio": speed,
                                    "hot_fraction": s.get("options", {}).get("hot_fraction")}
        if rss <= HEADLINE_RSS and (best is None or speed > best[0]):
            best = (speed, label)
    if best is None:
        return {**out, "system": None, "ratio": float("nan"), "met": False}
    label = best[1]
    paired = [x / y for x, y in zip(systems[label]["window_samples_per_s"],
                                    dram["window_samples_per_s"], strict=True)]
    return {**out, "system": label, "numerator": label, "denominator": DRAM, "ratio": best[0],
            "met": best[0] >= HEADLINE_SPEED,
            "median_of_paired_window_ratios": statistics.median(paired)}


def default_setup(quick: bool) -> tuple[Workload, Timing]:
    """The full workload of DESIGN.md, or the quick one (1M ids, fewer steps)."""
    if quick:
        timing = Timing(warmup=2, windows=5, steps_per_window=1)
        return Workload(num_ids=1_000_000, steps=timing.steps), timing
    timing = Timing(warmup=6, windows=8, steps_per_window=4)
    return Workload(num_ids=10_000_000, steps=timing.steps), timing


def system_specs(
    workload: Workload, timing: Timing, data: dict[str, str], root: Path, hot_fraction: float,
    lookahead: int, shards: int = 4, wide_fraction: float | None = 0.25,
) -> list[RunSpec]:
    """The systems of the comparison, and the dense MLP alone as their ceiling.

    ``wide_fraction`` adds a second 3-tier store with that DRAM budget (Ant's headline asks
    for the fastest budget within half the all-DRAM memory); None leaves it out.
    """
    options: dict[str, dict[str, Any]] = {
        TIERED: {"hot_fraction": hot_fraction, "lookahead": lookahead},
        DRAM: {"hot_fraction": None},
        THREE: {"hot_fraction": hot_fraction, "lookahead": lookahead,
                "slab_fraction": 1.0 - hot_fraction},
    }
    if wide_fraction is not None:
        options[THREE_WIDE] = {"hot_fraction": wide_fraction, "lookahead": lookahead,
                               "slab_fraction": 1.0 - wide_fraction}
    options.update({TORCH: {}, NAIVE: {}, DENSE: {}})
    for label in (TIERED, DRAM, THREE, THREE_WIDE):
        if label in options:
            options[label].update(
                prewarm="hot", store_path=str(root / label / "store"), num_shards=shards
            )
    kinds = {TIERED: "freshet", DRAM: "freshet", THREE: "freshet", THREE_WIDE: "freshet",
             TORCH: TORCH, NAIVE: NAIVE, DENSE: DENSE}
    batch_paths = {"ids": data["ids"], "labels": data["labels"]}
    return [
        RunSpec(label, kinds[label], workload, batch_paths, data["ranked"], str(root / label),
                timing.steps_per_window, opts)
        for label, opts in options.items()
    ]


def prepare_data(
    workload: Workload, root: Path, hot_fraction: float
) -> tuple[dict[str, str], dict[str, Any]]:
    """Generate and save the batches and the ids by popularity; returns paths and a summary."""
    sampler = ZipfSampler(workload.num_ids, workload.alpha, workload.seed)
    batches = generate(workload, sampler)
    paths = batches.save(root / "data")
    paths["ranked"] = str(root / "data" / "ranked.npy")
    np.save(paths["ranked"], sampler.ids_by_rank())
    summary = {
        "unique_ids_per_batch": unique_per_batch(batches),
        "distinct_ids_in_run": len(np.unique(batches.ids)),
        "top_id_probability": sampler.probability(0),
        "zipf_mass_of_hot_set": sampler.mass_of_top(int(workload.num_ids * hot_fraction)),
    }
    return paths, summary


def run_store_bench(
    out: Path, quick: bool = False, workload: Workload | None = None, timing: Timing | None = None,
    hot_fraction: float = 0.1, lookahead: int = 2, scratch: Path | None = None,
    profile: tuple[str, ...] = (), shards: int = 4, wide_fraction: float | None = 0.25,
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the systems and the ceiling (or ``only`` those), write ``out`` (JSON) and its PNG.

    Targets and ratios whose systems did not run are left out of the result.
    """
    from benchmarks.plot import plot_store
    from benchmarks.report import write_json

    default_w, default_t = default_setup(quick)
    timing = timing or default_t
    workload = replace(workload or default_w, steps=timing.steps)
    result = run_header("store", quick)
    out.parent.mkdir(parents=True, exist_ok=True)  # py-spy writes beside it before the JSON
    with tempfile.TemporaryDirectory(prefix="freshet-bench-", dir=scratch) as tmp:
        root = Path(tmp)
        data, summary = prepare_data(workload, root, hot_fraction)
        log.info("importing a row for each of %d ids into a Freshet store ...", workload.num_ids)
        base = root / "freshet-base"
        build_store(base, workload, num_shards=shards)
        specs = [
            replace(s, profile_path=str(out.with_suffix(f".{s.label}.pyspy.txt")))
            if s.label in profile else s
            for s in system_specs(workload, timing, data, root, hot_fraction, lookahead, shards,
                                   wide_fraction)
            if not only or s.label in only
        ]
        for spec in specs:
            if spec.kind == "freshet":
                clone_store(base, Path(spec.options["store_path"]))
        raw = run_interleaved(specs, [Segment(SEGMENT, timing.warmup, timing.windows)])
    systems = {label: _flatten(r) for label, r in raw.items()}
    for spec in specs:
        systems[spec.label].update(kind=spec.kind, options=spec.options)
    result.update(
        workload=workload.to_json(),
        workload_summary=summary,
        timing=asdict(timing),
        hot_fraction=hot_fraction,
        lookahead=lookahead,
        shards=shards,
        systems=systems,
        targets=[t.check(systems) for t in TARGETS
                 if t.numerator in systems and t.denominator in systems]
        + ([headline(systems)] if DRAM in systems else []),
        ratios={
            name: _ratio(systems[a].get(metric), systems[b].get(metric))
            for name, a, b, metric in INFO_RATIOS
            if a in systems and b in systems
        },
        notes=NOTES + ([f"{', '.join(profile)} ran under py-spy (100 Hz, --nonblocking)"]
                       if profile else []),
    )
    result["load_average_end"] = list(os.getloadavg())
    write_json(result, out)
    plot_store(result, out.with_suffix(".png"))
    return result


NOTES = [
    "every worker process calls embedding_store.allocator.tune_allocator() first, as the "
    "freshet command does (fixed 1 MiB glibc mmap threshold, 2 arenas): all systems alike",
    "each system runs in its own process on the same pre-generated batches; the processes "
    "prepare side by side, then their timed windows are taken in turn (rotating order) so "
    "that load from other work on the shared machine falls on all of them alike",
    "samples_per_s: median over windows of batch * steps_per_window / window wall seconds; "
    "samples_per_cpu_s: the same over the process's CPU seconds (all threads)",
    "one embedding table shared by all 26 features, ids from one Zipf over the id space "
    "(no per-feature offsets)",
    "torch.optim.Adagrad (torch EmbeddingBag) is element-wise; Freshet and the naive "
    "baseline use row-wise Adagrad: the accepted comparison",
    "every system holds a row for every id before timing (not timed): the Freshet stores "
    "open a hard-linked copy of one directory built by import_rows, then load their hot set "
    "(the most popular ids, where LFU settles; every id for all-DRAM) by lookups",
    "peak_rss_bytes: getrusage's high-water mark; train_peak_rss_bytes: VmHWM. Linux's "
    "clear_refs 5, written after the pre-warm, resets both (checked 2026-12-03), so both are "
    "the training phase's peak, not the hot-set load's",
    "peak_rss_anon_bytes / peak_rss_file_bytes: peaks of RssAnon + RssShmem and of RssFile, "
    "sampled every 50 ms and at each window's end from the worker's start (pre-warm "
    "included; train_peak_rss_anon_bytes / train_peak_rss_file_bytes from the end of the "
    "pre-warm): anon is memory "
    "the process cannot give back (no swap), file is mapped files (libraries, the slab's "
    "memory map: page cache the kernel may reclaim). The 3-tier RSS target counts anon; "
    "the VmHWM target (the metric before) stays beside it",
    "freshet_3tier_wide: the 3-tier chain with a wider DRAM budget; the last target (Ant's "
    "headline) takes the fastest Freshet tiered store within 0.5x all-DRAM's peak RSS anon",
    "hit_ratio: share of looked-up ids served without reading RocksDB (prefetch reads "
    "count as misses), as TableStats.hit_ratio; step_hit_ratio: share in DRAM at lookup",
    "a window ends once the tiered store's issued prefetches have landed; "
    "off_clock_cpu_seconds is CPU a process used between its windows",
]


def _flatten(raw: dict[str, Any]) -> dict[str, Any]:
    """One system's ready + main segment + final report as one flat dict."""
    out = {k: v for k, v in raw.items() if k not in ("segments", "event")}
    out.update(raw["segments"][SEGMENT])
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``freshet bench store`` (overrides are for tests and experiments)."""
    add_size_arguments(parser)
    parser.add_argument("--hot-fraction", type=float, default=0.1, help="tiered DRAM budget")
    parser.add_argument("--lookahead", type=int, default=2, help="batches prefetched ahead")
    parser.add_argument("--shards", type=int, default=4, help="shards of both Freshet stores")
    parser.add_argument("--wide-fraction", type=float, default=0.25,
                        help="DRAM budget of the second 3-tier store (0: leave it out)")
    parser.add_argument(
        "--profile", nargs="+", default=[],
        choices=[TIERED, DRAM, THREE, THREE_WIDE, TORCH, NAIVE, DENSE],
        help="sample these systems' training phase with py-spy (FILE.<system>.pyspy.txt)",
    )
    parser.add_argument(
        "--systems", nargs="+", default=[],
        choices=[TIERED, DRAM, THREE, THREE_WIDE, TORCH, NAIVE, DENSE],
        help="run only these systems (default: all); targets need both of their systems",
    )


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ids``, ``--batch``, ``--warmup``, ``--windows``, ``--steps``, ``--scratch``."""
    parser.add_argument("--ids", type=int, help="id space (default 10M, quick 1M)")
    parser.add_argument("--batch", type=int, help="samples per batch (default 4096)")
    parser.add_argument("--warmup", type=int, help="untimed steps before the windows")
    parser.add_argument("--windows", type=int, help="timed windows (>= 5 for the report)")
    parser.add_argument("--steps", type=int, help="steps per timed window")
    parser.add_argument("--scratch", help="directory for temporary stores (default: system tmp)")


def apply_overrides(
    workload: Workload, timing: Timing, args: argparse.Namespace
) -> tuple[Workload, Timing]:
    """``workload`` and ``timing`` with the command line's size overrides applied."""
    timing = Timing(
        args.warmup if args.warmup is not None else timing.warmup,
        args.windows if args.windows is not None else timing.windows,
        args.steps if args.steps is not None else timing.steps_per_window,
    )
    workload = replace(
        workload, num_ids=args.ids or workload.num_ids, batch=args.batch or workload.batch,
        steps=timing.steps,
    )
    return workload, timing


def run(args: argparse.Namespace) -> int:
    """``freshet bench store``."""
    from benchmarks.profile import pyspy_path
    from benchmarks.report import format_profile, format_store

    if args.profile and pyspy_path() is None:
        print("--profile needs py-spy: pip install py-spy")
        return 2
    workload, timing = apply_overrides(*default_setup(args.quick), args)
    out = Path(args.out)
    result = run_store_bench(
        out, args.quick, workload, timing, args.hot_fraction, args.lookahead,
        Path(args.scratch) if args.scratch else None, tuple(args.profile), args.shards,
        args.wide_fraction or None, tuple(args.systems),
    )
    print(format_store(result))
    for label in args.profile:
        print(format_profile(label, result["systems"][label]["profile"]))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
