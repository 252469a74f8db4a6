"""Writing results: the JSON file and a short text summary for the terminal.

>>> print(mib(3 * 1024 * 1024))
3.0 MiB
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def mib(n: float | None) -> str:
    """Bytes as MiB with one decimal."""
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write ``result`` to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def format_targets(targets: list[dict[str, Any]]) -> list[str]:
    """One line per target: ratio, bound, MET or MISSED (and the paired-window ratio)."""
    lines = []
    for t in targets:
        paired = t.get("median_of_paired_window_ratios")
        extra = f"; median of paired windows {paired:.2f}x" if paired is not None else ""
        lines.append(
            f"  {t['name']}: {t['ratio']:.2f}x (target {t['op']} {t['bound']}x) "
            f"{'MET' if t['met'] else 'MISSED'}{extra}"
        )
        if "needs_samples_per_s" in t:
            lines.append(
                f"    asks the tiered store for {t['needs_samples_per_s']:,.0f} samples/s = "
                f"{t['needs_vs_dense_only']:.2f}x the dense MLP alone "
                f"({t['dense_only_samples_per_s']:,.0f}/s)"
                + (
                    ": above the ceiling, out of reach of any store on this machine"
                    if t["above_ceiling"]
                    else ""
                )
            )
    return lines


def format_store(result: dict[str, Any]) -> str:
    """The store benchmark as a table, then its ratios and targets."""
    lines = [
        f"{'system':<20} {'samples/s':>10} {'per CPU-s':>10} {'peak RSS':>12} {'train peak':>12} "
        f"{'hit':>6} {'step hit':>8} {'stall ms/step':>13} {'off-clock CPU s':>15}"
    ]
    for name, s in result["systems"].items():
        lines.append(
            f"{name:<20} {s['samples_per_s']:>10.0f} {s['samples_per_cpu_s']:>10.0f} "
            f"{mib(s['peak_rss_bytes']):>12} {mib(s.get('train_peak_rss_bytes')):>12} "
            f"{_fmt(s.get('hit_ratio'), '.3f'):>6} {_fmt(s.get('step_hit_ratio'), '.3f'):>8} "
            f"{_fmt(s.get('prefetch_stall_ms_per_step'), '.1f'):>13} "
            f"{s['off_clock_cpu_seconds']:>15.1f}"
        )
    lines.append("ratios:")
    lines += [f"  {k}: {_fmt(v, '.2f')}x" for k, v in result["ratios"].items()]
    lines.append("targets:")
    lines += format_targets(result["targets"])
    return "\n".join(lines)


def format_profile(label: str, profile: dict[str, Any], top: int = 25) -> str:
    """Where one system's training phase spent its samples (all threads)."""
    threads = ", ".join(f"{k} {v:.0%}" for k, v in profile["threads"].items())
    lines = [
        f"profile of {label}: {profile['samples']} samples; threads: {threads}",
        "  inclusive:",
    ]
    lines += [f"    {share:6.1%}  {name}" for name, share in profile["inclusive"][:top]]
    lines.append("  self:")
    lines += [f"    {share:6.1%}  {name}" for name, share in profile["self"][:top]]
    return "\n".join(lines)
