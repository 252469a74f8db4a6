"""The checkpoint benchmark runs end to end on a tiny store and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.checkpoint_bench import main


def test_tiny_checkpoint_bench(tmp_path: Path) -> None:
    out = tmp_path / "ckpt.json"
    assert main(["--rows", "20000", "--out", str(out), "--work-dir", str(tmp_path / "w")]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "checkpoint"
    assert (result["full"]["rows"], result["incremental"]["rows"]) == (20000, 200)
    assert result["incremental"]["bytes"] < result["full"]["bytes"]
    assert result["restore_exact_on_sample"] is True
    assert result["restored_version"] == 3  # import (1) + one step per 8192 writes, twice
    assert list((tmp_path / "w").iterdir()) == []  # the work directory was removed
