"""``freshet inspect`` on a real store directory (RocksDB), closed and beside an open store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from pipeline.cli import inspect as inspect_cmd

pytestmark = pytest.mark.integration

TABLES = (TableConfig("ads", 4), TableConfig("users", 8))


def _train(store: EmbeddingStore, table: str, ids: np.ndarray) -> None:
    store.apply_gradients(table, ids, store.lookup(table, ids).numpy())
    store.step()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    inspect_cmd.add_arguments(parser)
    code = inspect_cmd.run(parser.parse_args(list(argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_counts_rows_and_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "store"
    with EmbeddingStore(StoreConfig(str(path), TABLES, num_shards=3)) as store:
        _train(store, "ads", np.arange(100, dtype=np.int64))
        _train(store, "users", np.arange(7, dtype=np.int64))
        _train(store, "ads", np.arange(50, 150, dtype=np.int64))
    code, out, _ = _run(capsys, "--store", str(path), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["version"] == 3 and report["num_shards"] == 3
    assert [(t["name"], t["hot_rows"], t["cold_rows"]) for t in report["tables"]] == [
        ("ads", 0, 150),
        ("users", 0, 7),
    ]
    code, out, _ = _run(capsys, "--store", str(path))
    assert code == 0
    assert out.splitlines()[0] == f"store {path}: 3 shards, format 1, version 3"
    header, ads = out.splitlines()[1].split(), out.splitlines()[2].split()
    assert header[0] == "table" and header[-2:] == ["cold", "rows"]
    assert (ads[0], ads[1], ads[-2], ads[-1]) == ("ads", "4", "0", "150")


def test_inspect_beside_an_open_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    with EmbeddingStore(StoreConfig(str(path), TABLES, num_shards=2)) as store:
        _train(store, "ads", np.arange(20, dtype=np.int64))
        store.flush()
        code, out, _ = _run(capsys, "--store", str(path), "--json")
        assert code == 0
        assert json.loads(out)["tables"][0]["cold_rows"] == 20


def test_not_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "--store", str(tmp_path))
    assert code == 2
    assert f"{tmp_path} is not a Freshet store directory: no schema.json" in err


def test_inspect_lists_checkpoint_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from operators.checkpoint import manager as checkpoint

    path, root = tmp_path / "store", tmp_path / "ckpt"
    manager = checkpoint.CheckpointManager(str(root))
    with EmbeddingStore(StoreConfig(str(path), TABLES, num_shards=2)) as store:
        _train(store, "ads", np.arange(10, dtype=np.int64))
        manager.write_full(store, {"w": np.ones(2)}, {"t/0": 10}, "cfg")
        _train(store, "ads", np.arange(3, dtype=np.int64))
        manager.write_incremental(store, {"w": np.ones(2)}, {"t/0": 13}, "cfg")
    manager.close()
    code, out, _ = _run(capsys, "--store", str(path), "--checkpoints", str(root))
    assert code == 0
    assert "checkpoints: 2" in out
    chain = next(line for line in out.splitlines() if line.strip().startswith("chain "))
    assert "full v=1" in chain and "incremental v=2" in chain and " ─► " in chain
