"""Measuring inside a worker process: resident memory and timed windows.

``peak_rss_bytes`` is the process's high-water mark since it started (``getrusage``);
``reset_peak_rss`` clears Linux's VmHWM so that ``peak_rss_since_reset`` covers one phase.

>>> summarise_windows([1.0, 2.0, 4.0], samples_per_window=8)["samples_per_s"]
4.0
"""

from __future__ import annotations

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
