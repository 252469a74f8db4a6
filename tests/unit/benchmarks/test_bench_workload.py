"""The benchmark workload's Zipf ids, and ``freshet bench store`` end to end on a tiny id space."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cli
from benchmarks.workload import Batches, Workload, ZipfSampler, generate


def harmonic(n: int, alpha: float) -> float:
    return float(np.sum(np.arange(1, n + 1, dtype=np.float64) ** -alpha))


def test_zipf_ids_in_range_and_deterministic() -> None:
    w = Workload(num_ids=5000, batch=64, features=26, steps=3)
    a, b = generate(w), generate(w)
    assert a.ids.shape == (3, 64, 26) and a.ids.dtype == np.int64
    assert a.ids.min() >= 0 and a.ids.max() < 5000
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels)
    assert set(np.unique(a.labels)) <= {0.0, 1.0}


def test_most_popular_id_frequency_matches_zipf_theory() -> None:
    n, alpha, draws = 100_000, 1.05, 400_000
    sampler = ZipfSampler(n, alpha, seed=3)
    ids = sampler.sample(np.random.default_rng(0), draws)
    counts = np.bincount(ids, minlength=n)
    top = sampler.ids_by_rank(3)
    expected = [draws * k**-alpha / harmonic(n, alpha) for k in (1, 2, 3)]
    assert expected[0] == pytest.approx(draws * sampler.probability(0))
    for got, want in zip(counts[top], expected, strict=True):
        assert got == pytest.approx(want, rel=0.03)  # ~0.5% std error at these counts
    # the most popular id really is the most frequent one, and ranks are spread over ids
    assert counts.argmax() == top[0]
    assert abs(int(top[0]) - int(top[1])) > 1


def test_mass_of_top_ids() -> None:
    sampler = ZipfSampler(1000, 1.2, seed=1)
    want = harmonic(100, 1.2) / harmonic(1000, 1.2)
    assert sampler.mass_of_top(100) == pytest.approx(want, rel=1e-9)
    assert sampler.mass_of_top(1000) == pytest.approx(1.0)
    assert sampler.mass_of_top(0) == 0.0


def test_batches_round_trip(tmp_path: Path) -> None:
    b = generate(Workload(num_ids=100, batch=4, features=2, steps=2))
    loaded = Batches.load(b.save(tmp_path))
    assert np.array_equal(loaded.grid(1), b.ids[1])
    assert loaded.grid(1).flags.writeable


@pytest.mark.integration
def test_bench_store_cli_tiny(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    args = [
        "store",
        "--quick",
        "--ids",
        "20000",
        "--batch",
        "256",
        "--warmup",
        "1",
        "--windows",
        "5",
        "--steps",
        "1",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    result = json.loads(out.read_text())
    systems = result["systems"]
    assert set(systems) == {
        "freshet_tiered",
        "freshet_dram",
        "freshet_3tier",
        "freshet_3tier_wide",
        "torch_embeddingbag",
        "naive_rocksdb",
        "dense_only",
    }
    for s in systems.values():
        assert s["samples_per_s"] > 0
        assert len(s["window_samples_per_s"]) == 5
        assert s["peak_rss_bytes"] > 50 * 2**20
    tiered = systems["freshet_tiered"]
    # prefetch has loaded every row before the lookup; some of them came from RocksDB
    assert 0.0 < tiered["hit_ratio"] < 1.0 and tiered["step_hit_ratio"] == pytest.approx(1.0)
    assert tiered["counters"]["cold_reads"] > 0
    assert tiered["info"]["hot_budget_rows"] == 2000
    assert systems["freshet_dram"]["hit_ratio"] == pytest.approx(1.0)
    assert systems["freshet_dram"]["counters"]["cold_reads"] == 0
    assert [t["bound"] for t in result["targets"]] == [1.0, 5.0, 0.30, 0.95, 1.0, 0.30, 0.30, 0.98]
    three = systems["freshet_3tier"]  # the slab holds what DRAM does not, and served reads
    # counters are deltas over the windows (slab_rows, a gauge, may shrink): the end state
    # is in info
    assert three["info"]["slab_rows"] > 0 and three["counters"]["cold_reads"] > 0
    assert three["info"]["slab_budget_rows"] == 18000
    ratio = systems["freshet_tiered"]["samples_per_s"] / systems["naive_rocksdb"]["samples_per_s"]
    assert result["targets"][1]["ratio"] == pytest.approx(ratio)
    # each samples/s target states what it asks of the tiered store against the MLP alone
    naive, dense = (systems[k]["samples_per_s"] for k in ("naive_rocksdb", "dense_only"))
    five = result["targets"][1]
    assert five["needs_samples_per_s"] == pytest.approx(5.0 * naive)
    assert five["needs_vs_dense_only"] == pytest.approx(5.0 * naive / dense)
    assert five["above_ceiling"] is (5.0 * naive > dense)
    assert "needs_samples_per_s" not in result["targets"][2]  # RSS: no ceiling
    assert systems["dense_only"]["counters"] == {}
    assert result["workload"]["num_ids"] == 20000 and result["quick"] is True
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.integration
def test_bench_sweep_cli_tiny_has_the_slab_axis(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    args = [
        "sweep",
        "--quick",
        "--ids",
        "20000",
        "--batch",
        "128",
        "--warmup",
        "1",
        "--windows",
        "5",
        "--steps",
        "1",
        "--budgets",
        "0.1",
        "1.0",
        "--alphas",
        "1.05",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    result = json.loads(out.read_text())
    points = {(p["hot_fraction"], p["slab"]): p for p in result["points"]}
    # DRAM 10% with and without the slab; all-DRAM has no ids left for a slab
    assert set(points) == {(0.1, False), (0.1, True), (1.0, False)}
    assert points[(0.1, True)]["slab_fraction"] == pytest.approx(0.9)
    assert points[(0.1, False)]["slab_fraction"] == 0.0
    for p in points.values():
        assert p["samples_per_s"] > 0
        assert 0 < p["peak_rss_anon_bytes"] <= p["peak_rss_bytes"]
    assert out.with_suffix(".png").stat().st_size > 10_000
