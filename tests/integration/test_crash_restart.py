"""Issue 4's crash test on the real broker: SIGKILL the trainer again and again, restart it.

The uninterrupted run and the crashed-and-restarted run train the same topic (batches close
on size only, one partition, so they are aligned). The crashed run is killed 12 times: inside
a checkpoint file write and inside a migration (failpoints), and at random moments from
outside. Each restart restores the newest complete checkpoint and seeks to its offsets. The
final checkpoints of both runs must hold the same rows, dense parameters, optimizer and
featurizer state (max abs diff <= 1e-6), the same offsets, and the same event count.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from configs.job import JobConfig
from embedding_store import EmbeddingStore, StoreConfig
from operators.checkpoint.manager import CheckpointManager
from pipeline.events.generators import generate
from pipeline.events.replay import replay
from pipeline.features.featurizer import Featurizer
from pipeline.training.featurizer_patches import FeaturizerPatches

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
EVENTS, BATCH = 6000, 200


def write_config(tmp: Path, name: str, bootstrap: str, topic: str) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "fraud.yaml").read_text())
    raw["source"].update(
        bootstrap_servers=[bootstrap],
        topic=topic,
        group_id=f"crash-{name}",
        assignment="manual",
        max_events=BATCH,
        max_wait_ms=600_000,
    )
    raw["store"] = {"path": str(tmp / name / "store"), "num_shards": 2, "hot_rows": 300}
    raw["operators"] = {
        "checkpoint": {"dir": str(tmp / name / "ckpt"), "retention": 2, "max_chain_length": 4},
        "schedules": [
            {"operator": "incremental_checkpoint", "trigger": {"type": "interval", "seconds": 0.4}},
            {"operator": "tier_migration", "trigger": {"type": "interval", "seconds": 0.3}},
        ],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "train",
            "--config",
            str(config),
            "--max-events",
            str(EVENTS),
            "--idle-timeout",
            "20",
        ],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def final_state(root: Path, tables: tuple) -> dict[str, np.ndarray]:
    manager = CheckpointManager(str(root / "ckpt"))
    latest = manager.latest_complete()
    assert latest is not None
    with EmbeddingStore(StoreConfig(str(root / f"restore-{latest.id}"), tables, 1)) as store:
        restored = manager.restore(store)
        out: dict[str, np.ndarray] = {
            f"dense:{k}": np.asarray(v.numpy() if hasattr(v, "numpy") else v)
            for k, v in restored.dense_tensors().items()
        }
        for table in tables:
            chunks = list(store.export_rows(table.name))
            ids = np.concatenate([c[0] for c in chunks])
            rows = np.concatenate([c[1] for c in chunks])
            order = np.argsort(ids)
            out[f"{table.name}:ids"] = ids[order]
            out[f"{table.name}:emb"] = rows["emb"][order]
            if table.state_dim:
                out[f"{table.name}:state"] = rows["state"][order]
        # the featurizer state: the chain's patch layers (whole, then the increments' changes)
        spec = JobConfig.from_yaml(root.parent / f"{root.name}.yaml").to_spec()
        featurizer = Featurizer(spec.features, spec.feature_state)
        FeaturizerPatches(featurizer).restore(restored.version, restored.patches)
        assert restored.patches, "no featurizer state in the checkpoint"
        for k, v in featurizer.state_dict().items():
            out[f"featurizer:{k}"] = np.asarray(v)
        out["offsets"] = np.array(sorted(restored.offsets.values()))
        out["events"] = np.array([restored.extra["events_trained"]])
        out["version"] = np.array([restored.version])
    manager.close()
    return out


def test_sigkilled_trainer_ends_where_the_uninterrupted_one_does(
    bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    from configs.job import JobConfig
    from pipeline.training.models import BatchLayout, model_tables

    topic = new_topic(1)
    assert replay(bootstrap, topic, generate("transaction", EVENTS, 3), progress=False) == EVENTS
    clean_cfg = write_config(tmp_path, "clean", bootstrap, topic)
    crash_cfg = write_config(tmp_path, "crash", bootstrap, topic)

    proc = train(clean_cfg)
    assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""

    rng = random.Random(11)
    kills = 0
    failpoints = [
        "checkpoint_file:3",  # inside a checkpoint's file writes
        "migration:2",  # inside a migration (after aging, before moving rows)
        "checkpoint_file:7",
        "migration_done:3",
    ]
    kinds: list[str] = []
    for attempt in range(40):
        env = {"FRESHET_FAILPOINTS": failpoints[attempt]} if attempt < len(failpoints) else {}
        proc = train(crash_cfg, env)
        if env:
            code = proc.wait(timeout=600)
        else:
            # startup (imports, restore, seek) takes a few seconds; kill anywhere after
            try:
                code = proc.wait(timeout=rng.uniform(2.0, 7.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                code = proc.wait(timeout=60)
        if code == -signal.SIGKILL:
            kills += 1
            kinds.append(env.get("FRESHET_FAILPOINTS", "random"))
        else:
            assert code == 0, proc.stderr.read() if proc.stderr else ""
        if kills >= 12:
            break
    proc = train(crash_cfg)
    assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""
    assert kills >= 10, kinds
    assert {"checkpoint_file:3", "migration:2"} <= set(kinds)

    config = JobConfig.from_yaml(clean_cfg)
    tables = model_tables(config.model.to_spec(), BatchLayout.from_spec(config.features.to_spec()))
    clean = final_state(tmp_path / "clean", tables)
    crashed = final_state(tmp_path / "crash", tables)
    assert int(clean["events"][0]) == int(crashed["events"][0]) == EVENTS
    assert clean["offsets"].tolist() == crashed["offsets"].tolist() == [EVENTS]
    assert clean["version"][0] == crashed["version"][0] == EVENTS // BATCH
    assert set(clean) == set(crashed)
    for key in clean:
        a, b = clean[key], crashed[key]
        assert a.shape == b.shape, key
        if a.dtype.kind == "f":
            assert np.abs(a.astype(np.float64) - b).max(initial=0.0) <= 1e-6, key
        else:
            assert np.array_equal(a, b), key
