"""The scaling benchmark on a tiny workload: JSON with per-rank figures and the core note."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.scaling_bench import format_table, main


@pytest.mark.integration  # two rank processes
@pytest.mark.slow
def test_scaling_bench_writes_per_rank_figures(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    argv = ["--out", str(out), "--ids", "5000", "--batch", "32", "--features", "4"]
    argv += ["--dim", "4", "--steps", "3", "--warmup", "1", "--ranks", "2", "--modes", "weak"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["world_size"] == 2 and len(run["per_rank"]) == 2
    for rank in run["per_rank"]:
        assert rank["samples_per_s"] > 0 and rank["a2a_bytes_per_step"] > 0
        assert 0 < rank["a2a_remote_bytes_per_step"] < rank["a2a_bytes_per_step"]
        assert rank["a2a_calls_per_step"] == 4  # counts, ids, rows, gradients
        assert rank["dense_allreduce_bytes_per_step"] > 0
    assert run["samples_per_s"] > 0 and run["speedup_vs_1_rank"] is None
    assert f"{result['cores']} CPU cores, shared by every rank" in result["note"]
    assert "rank 1" in format_table(result)
