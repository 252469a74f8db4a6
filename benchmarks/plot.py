"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed).

Each function takes the result dict that was written as JSON, so a plot can be redrawn
from a saved file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _title(result: dict[str, Any]) -> str:
    m = result["machine"]
    return f"{result['date']}  {m['cpu_model']}, {m['cpu_count']} cores (shared)"


def plot_store(result: dict[str, Any], path: Path) -> None:
    """Samples/s (median, min-max whiskers) and peak RSS per system."""
    systems = result["systems"]
    names = list(systems)
    rates = [systems[n]["samples_per_s"] for n in names]
    lo = [r - systems[n]["samples_per_s_min"] for r, n in zip(rates, names, strict=True)]
    hi = [systems[n]["samples_per_s_max"] - r for r, n in zip(rates, names, strict=True)]
    rss = [systems[n]["peak_rss_bytes"] / 2**30 for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    ax1.bar(names, rates, yerr=[lo, hi], capsize=4, color="tab:blue")
    ax1.set_ylabel("samples/s (median of windows)")
    for i, r in enumerate(rates):
        ax1.annotate(f"{r:,.0f}", (i, r), ha="center", va="bottom", fontsize=8)
    ax2.bar(names, rss, color="tab:orange")
    ax2.set_ylabel("peak RSS (GiB)")
    for i, r in enumerate(rss):
        ax2.annotate(f"{r:.2f}", (i, r), ha="center", va="bottom", fontsize=8)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    w = result["workload"]
    lines = [
        f"store benchmark: {w['num_ids']:,} ids, Zipf {w['alpha']}, batch {w['batch']}x"
        f"{w['features']}, dim {w['dim']}" + ("  (quick)" if result["quick"] else ""),
        "  ".join(
            f"{t['numerator']}/{t['denominator']} {t['ratio']:.2f}x "
            f"{'met' if t['met'] else 'MISSED'}"
            for t in result["targets"]
        ),
        _title(result),
    ]
    fig.suptitle("\n".join(lines), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """Samples/s and DRAM hit ratio against the DRAM budget, one line per Zipf exponent."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for alpha, points in _by_alpha(result["points"]).items():
        budgets = [100 * p["hot_fraction"] for p in points]
        ax1.plot(budgets, [p["samples_per_s"] for p in points], marker="o", label=f"Zipf {alpha}")
        ax2.plot(budgets, [p["hit_ratio"] for p in points], marker="o", label=f"Zipf {alpha}")
    for ax, label in ((ax1, "samples/s (median)"), (ax2, "hit ratio (no RocksDB read)")):
        ax.set_xscale("log")
        ax.set_xlabel("DRAM budget (% of ids)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    w = result["workload"]
    fig.suptitle(
        f"budget sweep: {w['num_ids']:,} ids, batch {w['batch']}x{w['features']}, dim {w['dim']}"
        + ("  (quick)" if result["quick"] else "")
        + "\n"
        + _title(result),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(result: dict[str, Any], path: Path) -> None:
    """Measured DRAM bytes per hot row against the row's raw bytes and the 1.5x limit."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    raw, limit = result["row_bytes"], result["row_bytes"] * result["target_ratio"]
    ax.bar(
        ["raw row", "1.5x limit", "measured"],
        [raw, limit, result["rss_bytes_per_row"]],
        color=["tab:gray", "tab:red", "tab:blue"],
    )
    ax.set_ylabel("bytes per hot row")
    ax.set_title(
        f"{result['rows']:,} hot rows: {result['ratio']:.2f}x raw "
        f"({'met' if result['met'] else 'MISSED'})\n" + _title(result),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_alpha(points: list[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    out: dict[float, list[dict[str, Any]]] = {}
    for p in sorted(points, key=lambda p: (p["alpha"], p["hot_fraction"])):
        out.setdefault(p["alpha"], []).append(p)
    return out
