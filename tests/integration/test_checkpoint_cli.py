"""``freshet checkpoint list|verify|restore|compact`` on a real checkpoint directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.manager import CheckpointManager
from pipeline.cli.main import main
from tests.unit.operators.conftest import assert_same_contents, store_contents, train_step

pytestmark = pytest.mark.integration

TABLES = (
    TableConfig("ads", 4, OptimizerConfig("adam", lr=0.05), seed=3, hot_rows=10),
    TableConfig("users", 2, OptimizerConfig("ftrl", lr=0.1)),
)


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A full checkpoint and two increments written by a 3-shard store."""
    root = tmp_path / "ckpt"
    manager = CheckpointManager(str(root))
    with EmbeddingStore(StoreConfig(str(tmp_path / "store"), TABLES, num_shards=3)) as store:
        for k in range(3):
            train_step(store, "ads", np.arange(k * 10, k * 10 + 30, dtype=np.int64))
            train_step(store, "users", np.arange(k, k + 5, dtype=np.int64))
            store.end_step()
            write = manager.write_full if k == 0 else manager.write_incremental
            write(store, {"mlp/w": np.full(3, k, np.float32)}, {"events/0": 100 + k}, "hash-1")
        contents = store_contents(store)
    return root, contents


def test_list_and_verify(chain: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[type-arg]
    root, _ = chain
    assert main(["checkpoint", "list", "--dir", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["id", "kind", "version"]
    assert [line.split()[:3] for line in out[1:]] == [
        ["000001-0000", "full", "1"],
        ["000001-0001", "incremental", "2"],
        ["000001-0002", "incremental", "3"],
    ]
    assert main(["checkpoint", "list", "--dir", str(root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["rows"] for c in listed] == [35, 35, 35]  # 30 ads + 5 users written each time

    assert main(["checkpoint", "verify", "--dir", str(root)]) == 0
    assert capsys.readouterr().out.split() == [
        "000001-0000:",
        "ok",
        "000001-0001:",
        "ok",
        "000001-0002:",
        "ok",
    ]
    with open(root / "chain-000001" / "ckpt-0001" / "rows-ads-0000.rows.npy", "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        fh.write(b"\x00" if fh.read(1) != b"\x00" else b"\x01")
    assert main(["checkpoint", "verify", "--dir", str(root), "000001-0002", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert list(report["problems"]) == ["000001-0002"]
    (problem,) = report["problems"]["000001-0002"]
    assert "000001-0001" in problem and "rows-ads-0000.rows.npy" in problem


def test_restore_rebuilds_the_store_from_the_recorded_schema(
    chain: tuple[Path, dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[type-arg]
) -> None:
    root, contents = chain
    target = tmp_path / "restored"
    dense = tmp_path / "dense.npz"
    code = main(
        [
            "checkpoint",
            "restore",
            "--dir",
            str(root),
            "--store-path",
            str(target),
            "--num-shards",
            "2",
            "--dense-out",
            str(dense),
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint"] == "000001-0002"
    assert (summary["version"], summary["config_hash"]) == (3, "hash-1")
    assert summary["offsets"] == {"events/0": 102}
    assert summary["rows"] == {"ads": 50, "users": 7}
    with np.load(dense, allow_pickle=False) as arrays:
        assert arrays["mlp/w"].tolist() == [2.0, 2.0, 2.0]
    with EmbeddingStore(StoreConfig(str(target), TABLES, num_shards=2)) as store:
        assert_same_contents(store_contents(store), contents)
        assert store.version == 3
    # a second restore into the same (now full) store is refused, --clear allows it
    args = ["checkpoint", "restore", "--dir", str(root), "--store-path", str(target)]
    assert main([*args, "--num-shards", "2", "--id", "000001-0000"]) == 1
    assert "holds" in capsys.readouterr().err
    assert main([*args, "--num-shards", "2", "--id", "000001-0000", "--clear"]) == 0


def test_compact_and_usage_errors(
    chain: tuple[Path, dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[type-arg]
) -> None:
    root, contents = chain
    assert main(["checkpoint", "compact", "--dir", str(root), "--retention", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["id"], info["kind"], info["compacted_from"]) == (
        "000002-0000",
        "full",
        "000001-0002",
    )
    assert sorted(n for n in os.listdir(root) if n.startswith("chain-")) == ["chain-000002"]
    target = tmp_path / "from-compacted"
    assert main(["checkpoint", "restore", "--dir", str(root), "--store-path", str(target)]) == 0
    capsys.readouterr()
    with EmbeddingStore(StoreConfig(str(target), TABLES, num_shards=3)) as store:
        assert_same_contents(store_contents(store), contents)

    assert main(["checkpoint", "list", "--dir", str(tmp_path / "missing")]) == 2
    assert main(["checkpoint", "verify", "--dir", str(root), "000009-0000"]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["checkpoint", "restore", "--dir", str(root)])  # --store-path missing
    assert exc.value.code == 2
