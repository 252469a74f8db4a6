"""Measuring inside a worker process: resident memory and timed windows.

``peak_rss_bytes`` is the process's high-water mark since it started (``getrusage``);
``reset_peak_rss`` clears Linux's VmHWM so that ``peak_rss_since_reset`` covers one phase.

>>> summarise_windows([1.0, 2.0, 4.0], samples_per_window=8)["samples_per_s"]
4.0
>>> w = {"seconds": 1.0, "cpu_seconds": 2.0, "off_clock_cpu_seconds": 0.0, "steps": 1,
...      "counters": {"hits": 9.0, "misses": 1.0, "cold_reads": 4.0}}
>>> s = summarise_segment([w, w], samples_per_window=10)
>>> s["samples_per_s"], s["samples_per_cpu_s"], s["hit_ratio"], s["step_hit_ratio"]
(10.0, 5.0, 0.6, 0.9)
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import sys
import time
from typing import Any

import psutil


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    """Resident set size now."""
    return int(psutil.Process().memory_info().rss)


def process_age_seconds() -> float:
    """Seconds since this process started."""
    return max(0.0, time.time() - psutil.Process().create_time())


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def peak_rss_since_reset() -> int | None:
    """VmHWM from ``/proc/self/status`` (the peak since ``reset_peak_rss``), if readable."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_by_thread() -> dict[str, float]:
    """CPU seconds (user + system) of this process's live threads, summed by thread name.

    Native threads keep their own names (RocksDB's ``rocksdb:low`` compaction and
    ``rocksdb:high`` flush pools), so their share shows apart from the interpreter's and
    torch's threads, which carry the process's name. Threads that already ended are missing.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm", encoding="utf-8") as fh:
                name = fh.read().strip()
            with open(f"/proc/self/task/{task}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = re.sub(r"[-:_ ]?\d+$", "", name) or "?"
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def cpu_by_thread_since(start: dict[str, float]) -> dict[str, float]:
    """:func:`cpu_by_thread` now minus ``start``, by name, rounded to 0.01 s."""
    now = cpu_by_thread()
    return {k: round(v - start.get(k, 0.0), 2) for k, v in sorted(now.items())}


def summarise_windows(seconds: list[float], samples_per_window: int) -> dict[str, Any]:
    """Median, min and max samples/s over timed windows."""
    rates = [samples_per_window / s for s in seconds]
    return {
        "samples_per_s": statistics.median(rates),
        "samples_per_s_min": min(rates),
        "samples_per_s_max": max(rates),
        "window_samples_per_s": rates,
        "window_seconds": seconds,
    }


def summarise_segment(windows: list[dict[str, Any]], samples_per_window: int) -> dict[str, Any]:
    """Throughput, CPU use and summed counters of a worker's windows.

    With the store's counters (``hits``, ``misses``, ``cold_reads``): ``hit_ratio`` is the
    share of looked-up ids served without reading RocksDB (by prefetch or by the step), as
    ``TableStats.hit_ratio``; ``step_hit_ratio`` the share already in DRAM at lookup time.
    """
    out = summarise_windows([w["seconds"] for w in windows], samples_per_window)
    cpu = [w["cpu_seconds"] for w in windows]
    out["samples_per_cpu_s"] = statistics.median(samples_per_window / c for c in cpu)
    out["window_cpu_seconds"] = cpu
    out["off_clock_cpu_seconds"] = sum(w["off_clock_cpu_seconds"] for w in windows)
    steps = sum(w["steps"] for w in windows)
    counters: dict[str, float] = {}
    for w in windows:
        for k, v in w["counters"].items():
            counters[k] = counters.get(k, 0.0) + v
    out["timed_steps"] = steps
    out["counters"] = counters
    if "hits" in counters:
        lookups = counters["hits"] + counters["misses"]
        cold = counters.get("cold_reads", counters["misses"] + counters.get("prefetched", 0.0))
        out["hit_ratio"] = max(0.0, 1.0 - cold / lookups) if lookups else None
        out["step_hit_ratio"] = counters["hits"] / lookups if lookups else None
        stall = counters.get("prefetch_stall_seconds", 0.0)
        out["prefetch_stall_seconds"] = stall
        out["prefetch_stall_ms_per_step"] = 1e3 * stall / steps if steps else None
    return out
