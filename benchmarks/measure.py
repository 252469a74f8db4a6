"""Measuring inside a worker process: resident memory and timed windows.

``peak_rss_bytes`` is the process's high-water mark (``getrusage``); ``reset_peak_rss`` clears
Linux's VmHWM so that ``peak_rss_since_reset`` covers one phase, and on Linux it resets
``getrusage``'s mark too (the same counter), so after a reset both cover only that phase.

RSS is three kinds of page (``/proc/self/status``)::

    VmRSS = RssAnon    heap, numpy arrays, torch tensors: only swap can take them (none here)
          + RssFile    mapped files: libraries, the slab's memory map; clean pages are page
                       cache the kernel may drop at any time, dirty ones it writes back first
          + RssShmem   shared memory

The kernel keeps a peak of the sum only, so :class:`RssSampler` samples the parts on a thread
(every ``period`` seconds) and keeps the peak of each: ``peak_rss_anon_bytes`` (anon + shmem,
the memory the process cannot give back) and ``peak_rss_file_bytes``. A peak shorter than the
period can be missed.

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
import threading
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


def rss_parts() -> dict[str, int]:
    """``RssAnon``, ``RssFile``, ``RssShmem`` and ``VmRSS`` now, in bytes (empty if unreadable).

    >>> parts = rss_parts()
    >>> not parts or parts["VmRSS"] >= parts["RssAnon"] > 0
    True
    """
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        return {}
    return out


class RssSampler:
    """Peaks of anon (+ shmem) and file-backed RSS, sampled on a daemon thread.

    >>> s = RssSampler(period=0.01).start()
    >>> peaks = s.stop()
    >>> sorted(peaks), (not s.samples) or peaks["peak_rss_anon_bytes"] > 0
    (['peak_rss_anon_bytes', 'peak_rss_file_bytes', 'peak_rss_sampled_bytes'], True)
    """

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.samples = 0
        self._peak = {"anon": 0, "file": 0, "total": 0}
        self._since_mark: dict[str, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> RssSampler:
        """Take a sample now and start the thread."""
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        """Read the parts now and raise the peaks (callers may sample at chosen points too)."""
        parts = rss_parts()
        if not parts:
            return
        anon = parts.get("RssAnon", 0) + parts.get("RssShmem", 0)
        with self._lock:
            self.samples += 1
            self._peak["anon"] = max(self._peak["anon"], anon)
            self._peak["file"] = max(self._peak["file"], parts.get("RssFile", 0))
            self._peak["total"] = max(self._peak["total"], parts.get("VmRSS", 0))
            if self._since_mark is not None:
                self._since_mark["anon"] = max(self._since_mark["anon"], anon)
                self._since_mark["file"] = max(self._since_mark["file"], parts.get("RssFile", 0))

    def mark(self) -> None:
        """Start a second pair of peaks from now (a phase: ``train_peak_rss_*_bytes``)."""
        with self._lock:
            self._since_mark = {"anon": 0, "file": 0}
        self.sample()

    def peaks(self) -> dict[str, int | None]:
        """The peaks so far (None where nothing could be read)."""
        with self._lock:
            if not self.samples:
                return dict.fromkeys(
                    ("peak_rss_anon_bytes", "peak_rss_file_bytes", "peak_rss_sampled_bytes"))
            out: dict[str, int | None] = {
                "peak_rss_anon_bytes": self._peak["anon"],
                "peak_rss_file_bytes": self._peak["file"],
                "peak_rss_sampled_bytes": self._peak["total"],
            }
            if self._since_mark is not None:
                out["train_peak_rss_anon_bytes"] = self._since_mark["anon"]
                out["train_peak_rss_file_bytes"] = self._since_mark["file"]
            return out

    def stop(self) -> dict[str, int | None]:
        """Stop the thread (after a last sample); returns :meth:`peaks`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return self.peaks()


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
