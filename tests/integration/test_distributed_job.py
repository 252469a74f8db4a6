"""A 2-rank job with operators and publishing on, through ``launch`` (what ``--nproc 2`` runs).

Partition p of a 2-partition topic is read by rank p (manual assignment) and batches close
full, so step i trains rank 0's batch i plus rank 1's batch i; a 1-rank trainer over a plain
store, built here, trains exactly that union as its batch i (see
test_distributed_equivalence.py). The job migrates, checkpoints and publishes a version after
every step (snapshots every few versions). Then:

- every published version, rebuilt from its snapshot and the deltas on the topic, holds the
  rows the 1-rank trainer had after that many steps: each version covers both ranks' rows;
- a replica fed by the job serves, at its final version, the 1-rank trainer's predictions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from configs.job import JobConfig
from embedding_store import EmbeddingStore, StoreConfig
from operators.checkpoint.distributed import load_world
from pipeline.events.kinds import CtrEvent, decode
from pipeline.features.featurizer import Featurizer
from pipeline.publishing.chunks import ChunkAssembler
from pipeline.publishing.delta import ModelDelta
from pipeline.publishing.snapshot import SnapshotStore
from pipeline.serving.http import ReplicaHttpServer
from pipeline.serving.model import Blueprint
from pipeline.serving.replica import Replica, ReplicaSettings
from pipeline.testing.replicas import http_call, predict_body, wait_for_version
from pipeline.training.launch import launch
from pipeline.training.models import BatchLayout, build_model, model_tables
from pipeline.training.trainer import OnlineTrainer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = 2
BATCH = 32  # events per rank per step
STEPS = 10
TOL = 1e-6


def job_config(bootstrap: str, topic: str, deltas: str, tmp: Path) -> dict[str, Any]:
    """A small DeepFM on Criteo fields (no per-rank featurizer state), operators, publishing."""
    sparse = [
        {"type": "categorical", "name": f"c{i}", "table": "cat", "field": f"c{i}"}
        for i in range(1, 9)
    ] + [
        {"type": "bucketize", "name": f"i{i}_b", "table": "num", "field": f"i{i}", "log_step": 0.5}
        for i in range(1, 4)
    ]
    return {
        "kind": "ctr",
        "source": {
            "bootstrap_servers": [bootstrap],
            "topic": topic,
            "group_id": f"{topic}-g",
            "assignment": "manual",
            "max_events": BATCH,
            "max_wait_ms": 600_000,  # batches close full: every event is already in the topic
        },
        # a DRAM budget below the rows seen: migration moves rows, snapshots read cold ones
        "store": {"path": str(tmp / "store"), "num_shards": 2, "hot_rows": 64},
        "training": {"prefetch_batches": 1},
        "features": {
            "label": "label",
            "sparse": sparse,
            "dense": [{"name": f"i{i}", "field": f"i{i}", "log1p": True} for i in range(1, 4)],
        },
        "model": {
            "type": "deepfm",
            "embedding_dim": 4,
            "hidden": [16],
            "bottom": [8],
            "init_scale": 0.05,
            "sparse_optimizer": {"kind": "adagrad", "lr": 0.05},
            "linear_optimizer": {"kind": "ftrl", "lr": 0.1},
            "dense_optimizer": {"kind": "adam", "lr": 0.01},
        },
        "operators": {
            "checkpoint": {"dir": str(tmp / "ckpt")},
            "schedules": [
                {"operator": "tier_migration", "trigger": {"type": "interval", "seconds": 0.2}},
                {
                    "operator": "incremental_checkpoint",
                    "trigger": {"type": "interval", "seconds": 0.5},
                },
                {"operator": "metrics_report", "trigger": {"type": "interval", "seconds": 0.5}},
            ],
        },
        "publish": {
            "bootstrap_servers": [bootstrap],
            "topic": deltas,
            "snapshot_dir": str(tmp / "snapshots"),
            "interval_s": 0.0,  # a version after every step
            "snapshot_every": 4,
        },
    }


def _produce(bootstrap: str, topic: str, payloads: list[list[bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    try:
        futures = [
            producer.send(topic, value=v, partition=p)
            for p, values in enumerate(payloads)
            for v in values
        ]
        producer.flush(30)
        for f in futures:
            f.get(30)
    finally:
        producer.close()


Rows = dict[str, dict[int, np.ndarray]]


def _reference(
    config: JobConfig, store_path: Path, batches: list[list[Any]], probe: list[Any]
) -> tuple[list[Rows], np.ndarray]:
    """The 1-rank trainer's rows after each step (index = store version) and its scores."""
    fspec, mspec = config.features.to_spec(), config.model.to_spec()
    layout = BatchLayout.from_spec(fspec)
    tables = model_tables(mspec, layout)
    after: list[Rows] = [{t.name: {} for t in tables}]
    with EmbeddingStore(StoreConfig(str(store_path), tables, num_shards=1)) as store:
        model = build_model(mspec, layout, store)
        trainer = OnlineTrainer(
            model,
            store,
            Featurizer(fspec),
            dense_optimizer=mspec.dense_optimizer.build(model.parameters()),
        )
        for events in batches:
            trainer.train_batch(events)
            rows: Rows = {}
            for t in tables:
                rows[t.name] = {}
                for ids, block in store.export_rows(t.name):
                    emb = np.asarray(block["emb"], np.float32).reshape(len(ids), t.dim)
                    rows[t.name].update(zip(ids.tolist(), emb, strict=True))
            after.append(rows)
        scores = trainer.score(probe)
    return after, scores


def _published_versions(
    bootstrap: str, deltas: str, snapshot_dir: Path
) -> list[tuple[int, int, Rows]]:
    """Every version on the delta topic, rebuilt as a replica would: (version, store v, rows)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(deltas, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    assembler = ChunkAssembler()
    out: list[tuple[int, int, Rows]] = []
    snapshots = {s.version: s for s in SnapshotStore(snapshot_dir).available()}
    rows: Rows | None = None
    try:
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    got = assembler.add(record.value)
                    if got is None:
                        continue
                    delta = ModelDelta.from_bytes(got.payload)
                    if delta.is_reset:
                        info = snapshots[delta.version]  # a reset is reachable by its snapshot
                        rows = {
                            name: {
                                i: e
                                for ids, emb in SnapshotStore(snapshot_dir).iter_rows(info, name)
                                for i, e in zip(ids.tolist(), emb, strict=True)
                            }
                            for name in info.tables
                        }
                    else:
                        assert rows is not None and out and delta.base == out[-1][0]
                        rows = {name: dict(table) for name, table in rows.items()}
                        for t in delta.tables:
                            for i in t.tombstones.tolist():
                                rows[t.name].pop(i, None)
                            rows[t.name].update(zip(t.ids.tolist(), t.emb, strict=True))
                    out.append((delta.version, delta.store_version, rows))
    finally:
        consumer.close()
    return out


def test_two_ranks_publish_complete_versions_a_replica_serves_like_one_rank(
    shared_data: Path, bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    lines = (shared_data / "criteo" / "train.txt").read_text().splitlines()
    per_rank = BATCH * STEPS
    payloads = [
        [
            json.dumps(CtrEvent.from_criteo_line(line).model_dump(mode="json")).encode()
            for line in lines[p * per_rank : (p + 1) * per_rank]
        ]
        for p in range(WORLD)
    ]
    topic, deltas = new_topic(WORLD), new_topic(1)
    _produce(bootstrap, topic, payloads)
    raw = job_config(bootstrap, topic, deltas, tmp_path)
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(raw))

    rc = launch(
        str(config_path), WORLD, ["--max-events", str(WORLD * per_rank), "--idle-timeout", "30"]
    )
    assert rc == 0

    config = JobConfig.model_validate(raw)
    events = [[decode("ctr", v) for v in part] for part in payloads]
    batches = [
        [e for p in range(WORLD) for e in events[p][i * BATCH : (i + 1) * BATCH]]
        for i in range(STEPS)
    ]
    probe = [CtrEvent.from_criteo_line(line) for line in lines[-40:]]
    after, want_scores = _reference(config, tmp_path / "single", batches, probe)

    # the operators ran on both ranks: coordinated checkpoints, the last one at the end
    world = load_world(str(tmp_path / "ckpt"))
    assert world and world[-1].world_size == WORLD and world[-1].version == STEPS
    assert world[-1].offsets == {f"{topic}/{p}": per_rank for p in range(WORLD)}

    # every version a replica could see holds every rank's rows at its step
    versions = _published_versions(bootstrap, deltas, tmp_path / "snapshots")
    assert [v for v, _, _ in versions] == list(range(1, len(versions) + 1))
    assert [s for _, s, _ in versions] == list(range(1, STEPS + 1))  # one per step
    worst = 0.0
    for version, store_version, rows in versions:
        want = after[store_version]
        for table, want_rows in want.items():
            got = rows.get(table, {})
            assert set(got) == set(want_rows), (
                f"v{version}: {table} has {len(got)} rows, the 1-rank model {len(want_rows)}"
            )
            for i, emb in want_rows.items():
                worst = max(worst, float(np.abs(got[i] - emb).max()))
    print(f"largest row difference over {len(versions)} versions: {worst:.3g}")
    assert worst <= TOL  # float sums in another order: measured 1.6e-7

    # a replica fed by the job serves what the 1-rank model predicts
    fspec, mspec = config.features.to_spec(), config.model.to_spec()
    replica = Replica(
        Blueprint(fspec, mspec, num_shards=1),
        ReplicaSettings(
            topic=deltas,
            snapshot_dir=str(tmp_path / "snapshots"),
            data_dir=str(tmp_path / "replica"),
            resync_poll_s=0.05,
        ),
        bootstrap,
        name="r0",
    )
    server = ReplicaHttpServer(replica, "ctr")
    try:
        with replica:
            server.start()
            final = versions[-1][0]
            assert wait_for_version(server.url, final) == final
            status, answer = http_call(server.url + "/predict", predict_body(probe))
    finally:
        server.close()
    assert status == 200 and answer["version"] == final
    got_scores = np.asarray(answer["scores"], np.float64)
    diff = float(np.abs(got_scores - want_scores.astype(np.float64)).max())
    print(f"replica vs 1-rank predictions: max abs diff {diff:.3g}")
    assert diff <= TOL, diff
