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
    anon = [(systems[n].get("peak_rss_anon_bytes") or 0) / 2**30 for n in names]
    file = [(systems[n].get("peak_rss_file_bytes") or 0) / 2**30 for n in names]
    ax2.bar(names, anon, color="tab:orange", label="peak anon (sampled)")
    ax2.bar(names, file, bottom=anon, color="moccasin", label="+ peak file-backed (sampled)")
    ax2.scatter(names, rss, color="black", marker="_", s=300, zorder=3,
                label="peak RSS (VmHWM)")
    ax2.set_ylabel("peak RSS (GiB)")
    ax2.legend(fontsize=7)
    for i, r in enumerate(rss):
        ax2.annotate(f"{r:.2f}", (i, r), ha="center", va="bottom", fontsize=8)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    w = result["workload"]
    lines = [
        f"store benchmark: {w['num_ids']:,} ids, Zipf {w['alpha']}, batch {w['batch']}x"
        f"{w['features']}, dim {w['dim']}" + ("  (quick)" if result["quick"] else ""),
        "  ".join(
            f"{t.get('numerator', '-')}/{t.get('denominator', '-')} {t['ratio']:.2f}x "
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
    """Samples/s, hit ratio and peak RSS against the DRAM budget, with and without the slab.

    One line per Zipf exponent and slab setting (dashed: with the slab); peak RSS is per
    worker (every exponent), anon solid and VmHWM (file pages included) dotted.
    """
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8))
    colors: dict[float, Any] = {}
    for (alpha, slab), points in _by_alpha_slab(result["points"]).items():
        color = colors.setdefault(alpha, f"C{len(colors)}")
        style = "--" if slab else "-"
        label = f"Zipf {alpha}" + (", slab" if slab else "")
        budgets = [100 * p["hot_fraction"] for p in points]
        ax1.plot(budgets, [p["samples_per_s"] for p in points], style, color=color, marker="o",
                 label=label)
        ax2.plot(budgets, [p["hit_ratio"] for p in points], style, color=color, marker="o",
                 label=label)
    for slab in (False, True):
        points = [p for p in sorted(result["points"], key=lambda p: p["hot_fraction"])
                  if p.get("slab", False) == slab and p["alpha"] == result["points"][0]["alpha"]]
        if not points:
            continue
        budgets = [100 * p["hot_fraction"] for p in points]
        color = "tab:red" if slab else "tab:gray"
        name = "with slab" if slab else "no slab"
        anon = [(p.get("peak_rss_anon_bytes") or 0) / 2**30 for p in points]
        ax3.plot(budgets, anon, "--" if slab else "-", color=color, marker="o",
                 label=f"{name}: peak anon")
        ax3.plot(budgets, [p["peak_rss_bytes"] / 2**30 for p in points], ":", color=color,
                 marker="x", label=f"{name}: VmHWM (incl. mapped file)")
    panels = ((ax1, "samples/s (median)"), (ax2, "hit ratio (no RocksDB read)"),
              (ax3, "peak RSS (GiB)"))
    for ax, label in panels:
        ax.set_xscale("log")
        ax.set_xlabel("DRAM budget (% of ids)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    w = result["workload"]
    fig.suptitle(
        f"budget sweep: {w['num_ids']:,} ids, batch {w['batch']}x{w['features']}, dim {w['dim']}"
        + ("  (quick)" if result["quick"] else "") + "; dashed: slab tier for the rest of the ids"
        + "\n" + _title(result),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(result: dict[str, Any], path: Path) -> None:
    """Measured DRAM bytes per hot row against the row's raw bytes and the 1.5x limit."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    raw, limit = result["row_bytes"], result["row_bytes"] * result["target_ratio"]
    ax.bar(["raw row", "1.5x limit", "measured"], [raw, limit, result["rss_bytes_per_row"]],
           color=["tab:gray", "tab:red", "tab:blue"])
    ax.set_ylabel("bytes per hot row")
    ax.set_title(
        f"{result['rows']:,} hot rows: {result['ratio']:.2f}x raw "
        f"({'met' if result['met'] else 'MISSED'})\n" + _title(result), fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_alpha_slab(
    points: list[dict[str, Any]],
) -> dict[tuple[float, bool], list[dict[str, Any]]]:
    """Points by (exponent, slab), by budget; the slab lines end at all-DRAM's point."""
    out: dict[tuple[float, bool], list[dict[str, Any]]] = {}
    for p in sorted(points, key=lambda p: (p["alpha"], p["hot_fraction"])):
        out.setdefault((p["alpha"], p.get("slab", False)), []).append(p)
    for (alpha, slab), line in out.items():
        full = [p for p in out.get((alpha, False), []) if p["hot_fraction"] >= 1.0]
        if slab and full:
            line.append(full[0])
    return out
