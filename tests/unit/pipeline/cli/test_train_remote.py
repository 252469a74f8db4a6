"""``freshet train``'s ``remote:`` wiring: frozen sources, the owner plugin, one-line refusals."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from configs.embedservice import RemoteSection
from configs.job import JobConfig
from pipeline.cli.train import remote_tables
from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.owner import OwnedTablesPublish
from pipeline.embedservice.server import ShardServer
from pipeline.embedservice.shard import RowUpdate, ServiceShard, ShardSettings, TableSchema
from pipeline.embedservice.tables import ServiceTable
from pipeline.training.spec import JobSpec
from pipeline.training.world import World


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[str]:
    server = ShardServer(ServiceShard(ShardSettings(str(tmp_path / "s0")))).start()
    client = ServiceClient([f"127.0.0.1:{server.port}"])
    client.register(TableSchema("users", 4, owner="ctr"))
    client.register(TableSchema("wide", 8, owner="ctr"))
    for v in (1, 2):
        ids = np.array([1, 2], np.int64)
        client.publish(RowUpdate("users", "ctr", v, v - 1, ids, np.full((2, 4), v, np.float32)))
    client.close()
    yield f"127.0.0.1:{server.port}"
    server.stop()


def _spec(tmp_path: Path) -> JobSpec:
    return JobConfig.model_validate(
        {
            "kind": "ctr",
            "source": {"topic": "t"},
            "store": {"path": str(tmp_path / "store")},
            "features": {
                "sparse": [
                    {"type": "categorical", "name": "u", "table": "users", "field": "c1"},
                    {"type": "categorical", "name": "m", "table": "merchants", "field": "c2"},
                ]
            },
            "model": {"type": "deepfm", "embedding_dim": 4},
        }
    ).to_spec()


def _remote(endpoint: str, *tables: dict[str, Any]) -> RemoteSection:
    return RemoteSection.model_validate(
        {"writer": "fraud", "service": {"endpoints": [endpoint], "retries": 1},
         "tables": list(tables)}
    )  # fmt: skip


def test_read_tables_are_pinned_and_owned_ones_get_the_publisher(
    tmp_path: Path, endpoint: str
) -> None:
    remote = _remote(
        endpoint, {"table": "users"}, {"table": "merchants", "service_table": "fraud_m",
                                        "mode": "own"},
    )  # fmt: skip
    out = remote_tables(_spec(tmp_path), remote, World.solo(), [])
    assert not isinstance(out, str)
    sources, plugins = out
    users = sources["users"]
    assert isinstance(users, ServiceTable) and users.version == 2  # the newest, pinned
    assert users.rows(np.array([1], np.int64)).tolist() == [[2.0] * 4]
    assert len(plugins) == 1 and isinstance(plugins[0], OwnedTablesPublish)
    assert plugins[0].owned == {"merchants": "fraud_m"} and plugins[0].writer == "fraud"
    users.client.close()
    plugins[0].client.close()


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"table": "users", "service_table": "wide"}, "has width 8, the model's table 4"),
        ({"table": "users", "service_table": "items"}, "no table 'items'"),
        ({"table": "clicks"}, "remote: tables ['clicks'] are not model tables"),
    ],
)
def test_a_table_that_does_not_fit_is_one_line(
    tmp_path: Path, endpoint: str, table: dict[str, Any], expected: str
) -> None:
    out = remote_tables(_spec(tmp_path), _remote(endpoint, table), World.solo(), [])
    assert isinstance(out, str) and expected in out and "\n" not in out


def test_remote_tables_need_one_rank(tmp_path: Path, endpoint: str) -> None:
    out = remote_tables(_spec(tmp_path), _remote(endpoint, {"table": "users"}), World(0, 2), [])
    assert out == "remote: tables need a one-rank job (--nproc 1)"


def test_freshet_train_refuses_remote_tables_on_several_ranks(tmp_path: Path) -> None:
    """Refused once, before any rank starts (exit 2, one line)."""
    job = tmp_path / "job.yaml"
    job.write_text(
        "kind: ctr\nsource: {topic: t}\n"
        "features: {sparse: [{type: categorical, name: u, table: users, field: c1}]}\n"
        "model: {type: logistic}\n"
        "remote: {writer: w, service: {endpoints: ['127.0.0.1:1']}, tables: [{table: users}]}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "train", "--config", str(job), "--nproc", "2"],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "freshet train: remote: tables need a one-rank job (--nproc 1)"
