"""One system in one process: ``python -m benchmarks.worker SPEC.json RESULT.json``.

::

    load batches (memory-mapped) ─► build system ─► prepare (untimed)
    ─► reset peak RSS ─► warm-up steps ─► counters ─► timed windows ─► counters
    ─► RESULT.json: samples/s (median of windows), peak RSS, counter deltas, notes

The process exits with ``os._exit`` once the result is written: tearing a 10M-row store
down (its final flush) is not part of any benchmark.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import measure
from benchmarks.workload import Batches, Workload


@dataclass(frozen=True)
class RunSpec:
    """What a worker runs: a system (kind + options) on a workload, and how to time it."""

    label: str
    kind: str
    workload: Workload
    batch_paths: dict[str, str]
    ranked_ids_path: str
    workdir: str
    warmup: int
    windows: int
    steps_per_window: int
    options: dict[str, Any] = field(default_factory=dict)
    profile_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict."""
        out = asdict(self)
        out["workload"] = self.workload.to_json()
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunSpec:
        """Inverse of :meth:`to_json`."""
        return cls(**{**raw, "workload": Workload.from_json(raw["workload"])})


def _ratios(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    out: dict[str, Any] = {"counters": delta}
    if "hits" in delta:
        lookups = delta["hits"] + delta["misses"]
        out["hit_ratio"] = delta["hits"] / lookups if lookups else None
        # ids whose row was not in DRAM when first asked for (by prefetch or by the lookup)
        cold = delta["misses"] + delta.get("prefetched", 0.0)
        out["dram_hit_ratio"] = 1.0 - cold / lookups if lookups else None
        out["prefetch_stall_seconds"] = delta.get("prefetch_stall_seconds", 0.0)
    return out


def run(spec: RunSpec) -> dict[str, Any]:
    """Prepare, warm up and time one system; returns its result."""
    from benchmarks.systems import build
    from benchmarks.systems.base import SystemContext

    started = time.time() - measure.process_age_seconds()
    batches = Batches.load(spec.batch_paths)
    ranked = np.load(spec.ranked_ids_path, mmap_mode="r")
    needed = spec.warmup + spec.windows * spec.steps_per_window
    if len(batches) < needed:
        raise ValueError(f"{spec.label}: {needed} batches needed, {len(batches)} generated")
    ctx = SystemContext(spec.workload, batches, ranked, Path(spec.workdir))
    system = build(spec.kind, ctx, spec.options)
    rss_start = measure.current_rss_bytes()
    t0 = time.perf_counter()
    system.prepare()
    prepare_s = time.perf_counter() - t0
    rss_prepared = measure.current_rss_bytes()
    reset_ok = measure.reset_peak_rss()
    profiler = None
    if spec.profile_path:
        from benchmarks.profile import Profiler

        profiler = Profiler(spec.profile_path)
        profiler.start()
    loss = float("nan")
    t0 = time.perf_counter()
    for i in range(spec.warmup):
        loss = system.train_step(i)
    warmup_s = time.perf_counter() - t0
    before = system.counters()
    seconds: list[float] = []
    step = spec.warmup
    for _ in range(spec.windows):
        t0 = time.perf_counter()
        for _ in range(spec.steps_per_window):
            loss = system.train_step(step)
            step += 1
        seconds.append(time.perf_counter() - t0)
    after = system.counters()
    if profiler is not None:
        profiler.stop()
    train_peak = measure.peak_rss_since_reset() if reset_ok else None
    rss_end = measure.current_rss_bytes()
    info = system.finish()
    total_s = time.time() - started
    timed_steps = spec.windows * spec.steps_per_window
    result: dict[str, Any] = {
        "label": spec.label,
        "kind": spec.kind,
        "options": spec.options,
        **measure.summarise_windows(seconds, spec.steps_per_window * spec.workload.batch),
        **_ratios(before, after),
        "warmup_steps": spec.warmup,
        "timed_steps": timed_steps,
        "process_seconds": total_s,
        "torch_threads": torch.get_num_threads(),
        "prepare_seconds": prepare_s,
        "warmup_seconds": warmup_s,
        "peak_rss_bytes": measure.peak_rss_bytes(),
        "train_peak_rss_bytes": train_peak,
        "rss_start_bytes": rss_start,
        "rss_after_prepare_bytes": rss_prepared,
        "rss_end_bytes": rss_end,
        "final_loss": loss,
        "info": info,
        "notes": system.notes,
    }
    if spec.profile_path:
        from benchmarks.profile import summarise

        result["profile"] = {"raw": spec.profile_path, **summarise(spec.profile_path)}
    if "prefetch_stall_seconds" in result:
        result["prefetch_stall_ms_per_step"] = 1e3 * result["prefetch_stall_seconds"] / timed_steps
    return result


def main(argv: list[str]) -> int:
    """Entry point: run the spec in ``argv[0]``, write the result to ``argv[1]``."""
    spec_path, result_path = argv
    spec = RunSpec.from_json(json.loads(Path(spec_path).read_text(encoding="utf-8")))
    result = run(spec)
    Path(result_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
