"""Acceptance 1 through the CLI: two job files alone share ``users`` through the service.

Two ``freshet embed-serve`` shard processes; a CTR job file declares ``remote: users, mode:
own`` (and ``publish:`` deltas) and ``freshet train`` publishes the table to the service as
it trains, at the deltas' versions (twice: two runs, versions v1 < v2). A fraud job file
declares ``remote: users, version: v1`` (read, frozen) and ``freshet train`` trains its own
tables over it. The same fraud job given a local copy of ``users`` at v1 (a store of the CTR
job's rows after its first run, read the same way: stored rows, else the initial value)
trains on the same events to the same prequential loss and AUC and the same model: its
predictions on held-out events equal the CLI-trained job's to 1e-6. The fraud job never
stores or publishes a ``users`` row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from configs.job import JobConfig
from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.tables import LocalTable, ServiceTable
from pipeline.events.replay import replay
from pipeline.publishing.publisher import last_published_version
from pipeline.testing.embed_shards import ShardProcess, start_shards
from pipeline.training.job import TrainJob
from pipeline.training.models import BatchLayout, model_tables

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BATCH = 128

JOB = """\
schema:
  name: NAME
  fields:
    label: {type: int, ge: 0, le: 1}
    user: {type: string}
    OTHER: {type: string}
source:
  topic: TOPIC
  bootstrap_servers: [BOOTSTRAP]
  group_id: GROUP
  session_timeout_ms: 6000
  max_events: 128
  max_wait_ms: 3000
store: {path: STORE}
features:
  label: label
  sparse:
    - {type: categorical, name: user, table: users, field: user}
    - {type: categorical, name: OTHER, table: OTHERs, field: OTHER}
model: {type: deepfm, embedding_dim: 4, hidden: [8], bottom: [4], seed: 3}
remote:
  writer: NAME
  service: {endpoints: [ENDPOINTS]}
  tables: [TABLES]
PUBLISH"""


def _job_file(path: Path, name: str, other: str, topic: str, bootstrap: str, **kw: str) -> Path:
    text = (
        JOB.replace("NAME", name)
        .replace("OTHER", other)
        .replace("TOPIC", topic)
        .replace("BOOTSTRAP", bootstrap)
        .replace("GROUP", kw["group"])
        .replace("STORE", kw["store"])
        .replace("ENDPOINTS", kw["endpoints"])
        .replace("TABLES", kw["tables"])
        .replace("PUBLISH", kw.get("publish", ""))
    )
    path.write_text(text)
    return path


def _events(seed: int, n: int, users: int, other: str, card: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    u, o = rng.integers(0, users, n), rng.integers(0, card, n)
    p = 0.15 + 0.6 * ((u % 7) == 0)  # a user effect the embeddings can learn
    labels = rng.random(n) < p
    return [
        {"label": int(labels[i]), "user": f"u{u[i]}", other: f"{other[0]}{o[i]}"} for i in range(n)
    ]


def _train(config: Path, max_events: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "train", "--config", str(config),
         "--max-events", str(max_events), "--idle-timeout", "20"],
        check=False, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{") :])
    return out


def _users_rows(config: Path) -> tuple[np.ndarray, np.ndarray, TableConfig]:
    """The CTR job's ``users`` rows, read from its store directory after the run."""
    spec = JobConfig.from_yaml(config).to_spec()
    tables = tuple(
        t
        for t in model_tables(spec.model, BatchLayout.from_spec(spec.features))
        if t.name != "users"
    )
    users = next(
        t
        for t in model_tables(spec.model, BatchLayout.from_spec(spec.features))
        if t.name == "users"
    )
    cfg = StoreConfig(spec.store.path, (users, *tables), num_shards=spec.store.num_shards)
    with EmbeddingStore(cfg) as store:
        parts = list(store.export_rows("users"))
    ids = np.concatenate([i for i, _ in parts])
    emb = np.concatenate([np.asarray(r["emb"], np.float32) for _, r in parts])
    order = np.argsort(ids)
    return ids[order], emb[order], users


@pytest.fixture
def service(tmp_path: Path) -> Iterator[list[ShardProcess]]:
    shards = start_shards(tmp_path / "svc", 2)
    yield shards
    for s in shards:
        s.stop()


def test_fraud_job_file_reads_users_from_the_ctr_job_file_like_a_local_copy(
    bootstrap: str,
    new_topic: Callable[[int], str],
    tmp_path: Path,
    service: list[ShardProcess],
) -> None:
    endpoints = ", ".join(s.endpoint for s in service)
    client = ServiceClient([s.endpoint for s in service])
    # -- the CTR job owns `users`: two runs of `freshet train` publish v1, then v2
    ctr_topic = new_topic(1)
    ctr_events = _events(1, 1024, 400, "ad", 50)
    assert replay(bootstrap, ctr_topic, [(None, e) for e in ctr_events], progress=False) == 1024
    deltas = new_topic(1)  # with publish:, the service's versions are the deltas' versions
    publish = (
        f"publish: {{bootstrap_servers: [{bootstrap}], topic: {deltas}, "
        f"snapshot_dir: {tmp_path / 'snapshots'}, interval_s: 3600}}\n"
    )
    ctr = _job_file(
        tmp_path / "ctr.yaml", "ctr", "ad", ctr_topic, bootstrap, group="ctr",
        store=str(tmp_path / "ctr-store"), endpoints=endpoints,
        tables="{table: users, mode: own}", publish=publish,
    )  # fmt: skip
    _train(ctr, 512)
    v1 = client.versions("users")[0][1]
    assert v1 >= 1 and {v for _, v in client.versions("users")} == {v1}
    assert last_published_version(bootstrap, deltas).version == v1
    ids1, emb1, users_cfg = _users_rows(ctr)
    assert len(ids1) > 200
    got = client.lookup("users", ids1, v1)
    assert got.found.all()
    np.testing.assert_array_equal(got.emb, emb1)  # what the job trained is what it published
    _train(ctr, 1024)  # resumes at 512 events, trains 512 more, publishes again
    v2 = client.versions("users")[0][1]
    assert v2 > v1 and last_published_version(bootstrap, deltas).version == v2
    ids2, emb2, _ = _users_rows(ctr)
    np.testing.assert_array_equal(client.lookup("users", ids2, v2).emb, emb2)
    assert np.abs(client.lookup("users", ids1, v2).emb - emb1).max() > 1e-4  # v2 moved on
    rows_before = client.rows("users")

    # -- the fraud job file: `users` read frozen at v1, its own tables trained (CLI)
    fraud_topic = new_topic(1)
    fraud_events = _events(7, 768, 600, "merchant", 80)  # users 400..599: never trained
    assert replay(bootstrap, fraud_topic, [(None, e) for e in fraud_events], progress=False) == 768
    fraud = _job_file(
        tmp_path / "fraud.yaml", "fraud", "merchant", fraud_topic, bootstrap, group="fraud",
        store=str(tmp_path / "fraud-store"), endpoints=endpoints,
        tables=f"{{table: users, mode: read, version: {v1}}}",
    )  # fmt: skip
    remote_run = _train(fraud, 768)
    assert remote_run["events"] == 768
    assert client.rows("users") == rows_before  # the reader never wrote a row
    assert client.versions("users")[0][1] == v2

    # -- the same job given a local copy of `users` at v1 (in process, its own group and store)
    copy_cfg = TableConfig(
        "users",
        users_cfg.dim,
        OptimizerConfig("sgd", lr=1.0),
        seed=users_cfg.seed,
        init_scale=users_cfg.init_scale,
    )
    copy = EmbeddingStore(StoreConfig(str(tmp_path / "copy-v1"), (copy_cfg,), 1)).open()
    block = np.zeros(len(ids1), copy._shard_tables("users")[0].layout.dtype)
    block["emb"] = emb1
    copy.import_rows("users", ids1, block)
    schema = client.schema("users")
    spec = JobConfig.from_yaml(fraud).to_spec()
    local_spec = replace(
        spec.with_store_path(str(tmp_path / "fraud-local-store")),
        source=replace(spec.source, group_id="fraud-local"),
    )
    probe = _events(99, 256, 600, "merchant", 80)
    local = TrainJob(local_spec, table_sources={"users": LocalTable(copy, schema)})
    with local:
        local_run = local.run(max_events=768, idle_timeout_s=20)
        assert local.trainer is not None and local.store is not None
        local_scores = local.trainer.score(probe)
        assert "users" not in {t.name for t in local.store.tables}
    copy.close()
    assert local_run.events == 768
    assert abs(remote_run["log_loss"] - local_run.log_loss) <= 1e-6
    assert abs(remote_run["auc"] - local_run.auc) <= 1e-6

    # the CLI-trained fraud model (restored from its final checkpoint) predicts as the copy's
    frozen = ServiceTable(client, "users", v1)
    reopened = TrainJob(spec, table_sources={"users": frozen}).open()
    try:
        assert reopened.trainer is not None and reopened.store is not None
        assert reopened.events_trained == 768
        assert "users" not in {t.name for t in reopened.store.tables}  # never stored locally
        remote_scores = reopened.trainer.score(probe)
    finally:
        reopened.close(clean=False)
    assert frozen.last_version == v1
    diff = float(np.abs(remote_scores - local_scores).max())
    assert diff <= 1e-6, f"remote and local-copy predictions differ by {diff}"
    # and v1 mattered: the users at v2 would predict otherwise
    at_v2 = TrainJob(spec, table_sources={"users": ServiceTable(client, "users", v2)}).open()
    try:
        assert at_v2.trainer is not None
        assert np.abs(at_v2.trainer.score(probe) - local_scores).max() > 1e-6
    finally:
        at_v2.close(clean=False)
    client.close()
