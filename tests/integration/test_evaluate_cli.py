"""``freshet evaluate``: prequential figures of a job on a file, no broker (a real subprocess)."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs.job import JobConfig
from pipeline.cli.evaluate import evaluate
from tests.integration.test_own_stream import BAD, COLUMNS, JOB, N_GOOD, rows

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def freshet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_criteo_figures_match_the_in_process_run(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "criteo" / "train.txt"
    out = tmp_path / "criteo.json"
    done = freshet(
        "evaluate", "--config", str(REPO / "configs" / "ctr.yaml"), "--file", str(data),
        "--batch-size", "64", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (result["events"], result["dead_letters"], result["batch_size"]) == (1999, 0, 64)
    assert 0.65 < result["auc"] < 0.75  # 0.6846 on 2026-12-03
    assert (tmp_path / "criteo.png").stat().st_size > 10_000
    again = evaluate(JobConfig.from_yaml(REPO / "configs" / "ctr.yaml"), data, batch_size=64)
    assert again["auc"] == result["auc"] and again["log_loss"] == result["log_loss"]


def test_a_new_stream_from_gzipped_csv_with_dead_letters(tmp_path: Path) -> None:
    data = tmp_path / "clicks.csv.gz"
    with gzip.open(data, "wt", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows(rows())
    job = tmp_path / "job.yaml"
    job.write_text(
        JOB.replace("TOPIC", "t").replace("BOOTSTRAP", "127.0.0.1:1").replace("STORE", "s")
    )
    out = tmp_path / "eval.json"
    done = freshet("evaluate", "--config", str(job), "--file", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (result["events"], result["dead_letters"]) == (N_GOOD, len(BAD))
    reasons = " | ".join(r for r, _ in result["top_reasons"])
    for _, why in BAD.values():
        assert why in reasons


def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text((REPO / "configs" / "ctr.yaml").read_text().replace("field: c7}", "field: c77}"))
    done = freshet("evaluate", "--config", str(job), "--file", str(tmp_path / "none.csv"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "features.sparse[6].field: no field 'c77' in schema 'ctr'" in done.stderr
