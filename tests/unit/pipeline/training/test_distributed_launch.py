"""launch(): torchrun's environment per rank; the first failure stops the others."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.training.launch import launch, rank_environment

FAKE_RANK = """#!/bin/sh
# stands in for `python -m pipeline.cli.rank ...`: records its environment and args
echo "$RANK $LOCAL_RANK $WORLD_SIZE $MASTER_ADDR $MASTER_PORT $*" > "$OUT/rank-$RANK"
if [ "$RANK" = "$FAIL_RANK" ]; then exit 3; fi
if [ -n "$SLEEP" ]; then exec sleep "$SLEEP"; fi
exit 0
"""


def _fake_python(tmp_path: Path) -> str:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_RANK)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_every_rank_gets_torchrun_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setenv("FAIL_RANK", "none")
    rc = launch("job.yaml", 2, ["--max-events", "5"], python=_fake_python(tmp_path))
    assert rc == 0
    lines = [(tmp_path / f"rank-{r}").read_text().split() for r in range(2)]
    assert [line[:4] for line in lines] == [
        ["0", "0", "2", "127.0.0.1"],
        ["1", "1", "2", "127.0.0.1"],
    ]
    assert lines[0][4] == lines[1][4]  # one rendezvous port
    assert lines[0][5:] == [
        "-m",
        "pipeline.cli.rank",
        "--config",
        "job.yaml",
        "--max-events",
        "5",
    ]


def test_first_failure_stops_the_other_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setenv("FAIL_RANK", "1")
    monkeypatch.setenv("SLEEP", "60")
    t0 = time.monotonic()
    assert launch("job.yaml", 2, python=_fake_python(tmp_path)) == 3
    assert time.monotonic() - t0 < 30  # rank 0 (sleeping) was terminated, not waited for


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="nproc"):
        launch("job.yaml", 0)
    env = rank_environment(2, 4, 1234, base={"PATH": os.environ.get("PATH", "")})
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == (
        "2",
        "2",
        "4",
        "1234",
    )
