"""2 ranks over the real broker train the same stream to the same parameters as 1 rank.

Partition p of a 2-partition topic is read by rank p (manual assignment); batch i of the
2-rank job is rank 0's batch i plus rank 1's batch i, and the 1-rank reference (built here,
in-process, over a plain store) trains exactly that union as its batch i.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from kafka import KafkaProducer

from configs.job import JobConfig
from embedding_store import EmbeddingStore, StoreConfig
from embedding_store.distributed import DistributedStore, owner_of
from pipeline.events.kinds import CtrEvent, decode
from pipeline.features.featurizer import Featurizer
from pipeline.training.models import BatchLayout, build_model, model_tables
from pipeline.training.trainer import OnlineTrainer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = 2
BATCH = 48  # events per rank per step
STEPS = 4
TOL = 1e-4


def job_config(bootstrap: str, topic: str, store: Path) -> dict[str, Any]:
    """A small DeepFM on Criteo fields: no aggregates, no standardisation (per-rank state)."""
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
            "max_wait_ms": 20_000,  # batches close full: every event is already in the topic
        },
        "store": {"path": str(store), "num_shards": 2},
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
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, config_path: str, out: str) -> None:
    from pipeline.training.job import TrainJob
    from pipeline.training.world import World

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        job = TrainJob(JobConfig.from_yaml(config_path).to_spec(), world=World.joined())
        with job:
            summary = job.run(max_events=WORLD * BATCH * STEPS, idle_timeout_s=60)
            params = {n: p.detach().numpy().copy() for n, p in job.model.named_parameters()}
            assert job.store is not None and isinstance(job.shared_store, DistributedStore)
            stats = job.shared_store.stats
            report = {
                "events": summary.events,
                "batches": summary.batches,
                "steps": job.steps,
                "calls": stats.calls,
                "version": job.store.version,
            }
        np.savez(Path(out) / f"dense-{rank}.npz", **params)
        (Path(out) / f"report-{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def _produce(bootstrap: str, topic: str, payloads: list[list[bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    try:
        futures = [
            producer.send(topic, value=v, key=str(i).encode(), partition=p)
            for p, values in enumerate(payloads)
            for i, v in enumerate(values)
        ]
        producer.flush(30)
        for f in futures:
            f.get(30)
    finally:
        producer.close()


def _reference(
    config: JobConfig, store_path: Path, batches: list[list[Any]]
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    fspec, mspec = config.features.to_spec(), config.model.to_spec()
    layout = BatchLayout.from_spec(fspec)
    tables = model_tables(mspec, layout)
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
        rows = {}
        for t in tables:
            parts = list(store.export_rows(t.name))
            ids = np.concatenate([i for i, _ in parts])
            block = np.concatenate([r for _, r in parts])
            order = np.argsort(ids)
            rows[t.name] = (ids[order], block[order])
        dense = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    return rows, dense


def test_two_ranks_train_to_the_parameters_of_one(
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
    topic = new_topic(WORLD)
    _produce(bootstrap, topic, payloads)
    raw = job_config(bootstrap, topic, tmp_path / "dist-store")
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    out.mkdir()

    mp.start_processes(
        _rank,
        args=(WORLD, _free_port(), str(config_path), str(out)),
        nprocs=WORLD,
        start_method="spawn",
    )

    reports = [json.loads((out / f"report-{r}.json").read_text()) for r in range(WORLD)]
    for r in reports:
        assert r["events"] == per_rank and r["batches"] == STEPS and r["steps"] == STEPS
        assert r["version"] == STEPS
    assert len({r["calls"] for r in reports}) == 1  # the same collectives on every rank

    events = [[decode("ctr", v) for v in part] for part in payloads]
    batches = [
        [e for p in range(WORLD) for e in events[p][i * BATCH : (i + 1) * BATCH]]
        for i in range(STEPS)
    ]
    config = JobConfig.model_validate(raw)
    want_rows, want_dense = _reference(config, tmp_path / "single", batches)

    worst: dict[str, float] = {}
    for table, (ids, want) in want_rows.items():
        got_ids, got_rows = [], []
        for rank in range(WORLD):
            path = tmp_path / "dist-store" / f"rank-{rank:04d}"
            tables = model_tables(
                config.model.to_spec(), BatchLayout.from_spec(config.features.to_spec())
            )
            with EmbeddingStore(StoreConfig(str(path), tables, num_shards=2)) as store:
                for block_ids, block in store.export_rows(table):
                    assert (owner_of(block_ids, WORLD) == rank).all(), f"{table}: misplaced row"
                    got_ids.append(block_ids)
                    got_rows.append(block)
        all_ids = np.concatenate(got_ids)
        rows = np.concatenate(got_rows)
        order = np.argsort(all_ids)
        all_ids, rows = all_ids[order], rows[order]
        assert len(np.unique(all_ids)) == len(all_ids), f"{table}: a row on two ranks"
        assert np.array_equal(all_ids, ids), f"{table}: rows differ from the 1-rank run's"
        worst[f"{table}.emb"] = float(np.abs(rows["emb"] - want["emb"]).max())
        if "state" in want.dtype.names:
            scale = np.maximum(1.0, np.abs(want["state"]))
            worst[f"{table}.state(rel)"] = float(
                (np.abs(rows["state"] - want["state"]) / scale).max()
            )
        assert (rows["version"] == want["version"]).all()
        assert (rows["freq"] == want["freq"]).all()
    dense = [np.load(out / f"dense-{r}.npz") for r in range(WORLD)]
    for name, want in want_dense.items():
        for r in range(WORLD):
            worst[f"dense.{name}@{r}"] = float(np.abs(dense[r][name] - want).max())
    print(json.dumps(worst, indent=1))
    assert max(worst.values()) <= TOL, worst
    torch.testing.assert_close(
        torch.from_numpy(dense[0]["top.0.weight"]),
        torch.from_numpy(dense[1]["top.0.weight"]),
        rtol=0,
        atol=0,
    )  # ranks hold identical dense parameters
