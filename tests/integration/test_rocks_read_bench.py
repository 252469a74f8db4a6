"""The cold-tier micro-benchmark on a tiny store: every part runs, and its checks that all
read paths return the same rows (and eviction the same victims) hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.rocks_read_bench import main

pytestmark = pytest.mark.integration


def test_tiny_run_writes_every_part(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    argv = ["--out", str(out), "--ids", "20000", "--keys", "500", "--rounds", "1"]
    argv += ["--steps", "1", "--hot-rows", "2000", "--l0-files", "1", "--l0-rows", "1000"]
    argv += ["--memtable-rows", "500"]
    argv += ["--layouts", "default", "tuned", "tuned_mmap", "--work-dir", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    reads = result["reads"]["cpu_us_per_key"]
    assert {"default/legacy", "tuned/get", "tuned_mmap/get", "tuned/raw"} <= set(reads)
    assert result["reads"]["layouts"]["tuned"]["files_per_level"][0] == 4  # one L0 file a shard
    assert set(result["writes"]["cpu_us_per_row"]) == {"legacy", "put"}
    assert result["eviction"]["marked_per_call"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("freshet-rocks-")]
