"""Issue 21 #3: crash-exactness with several partitions, on the real broker.

A topic of 4 partitions (events keyed by customer, so each customer stays on one partition)
is trained once without interruption and once with at least 8 SIGKILLs of the trainer: inside
checkpoint file writes and a migration (failpoints) and at random moments. Batches close on
size only. The source merges the partitions in a deterministic order
(:mod:`pipeline.source.merge`), so which events share a batch depends on the checkpointed
offsets and the records alone, and the crashed run must end bitwise equal to the
uninterrupted one: rows, optimizer state, dense parameters, featurizer state and offsets.
"""

from __future__ import annotations

import random
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.events.generators import generate
from pipeline.events.replay import keyed_by_field, replay
from tests.integration.test_crash_restart import BATCH, EVENTS, final_state, train, write_config

# about 12 trainer start-ups: minutes on a loaded machine, more than the default timeout
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]
PARTITIONS = 4


def test_sigkilled_trainer_on_four_partitions_ends_bitwise_equal(
    bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    from configs.job import JobConfig
    from pipeline.training.models import BatchLayout, model_tables

    topic = new_topic(PARTITIONS)
    events = keyed_by_field(generate("transaction", EVENTS, 5), "customer_id")
    assert replay(bootstrap, topic, events, progress=False) == EVENTS
    clean_cfg = write_config(tmp_path, "clean", bootstrap, topic)
    crash_cfg = write_config(tmp_path, "crash", bootstrap, topic)

    proc = train(clean_cfg)
    assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""

    rng = random.Random(21)
    failpoints = ["checkpoint_file:3", "migration:2", "checkpoint_file:6", "migration_done:2"]
    kinds: list[str] = []
    for attempt in range(40):
        env = {"FRESHET_FAILPOINTS": failpoints[attempt]} if attempt < len(failpoints) else {}
        proc = train(crash_cfg, env)
        if env:
            code = proc.wait(timeout=600)
        else:
            try:
                code = proc.wait(timeout=rng.uniform(2.0, 7.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                code = proc.wait(timeout=60)
        if code == -signal.SIGKILL:
            kinds.append(env.get("FRESHET_FAILPOINTS", "random"))
        else:
            assert code == 0, proc.stderr.read() if proc.stderr else ""
        if len(kinds) >= 8:
            break
    proc = train(crash_cfg)
    assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""
    assert len(kinds) >= 8, kinds
    assert {"checkpoint_file:3", "checkpoint_file:6"} <= set(kinds)  # mid-checkpoint kills

    config = JobConfig.from_yaml(clean_cfg)
    tables = model_tables(config.model.to_spec(), BatchLayout.from_spec(config.features.to_spec()))
    clean = final_state(tmp_path / "clean", tables)
    crashed = final_state(tmp_path / "crash", tables)
    assert int(clean["events"][0]) == int(crashed["events"][0]) == EVENTS
    assert int(clean["offsets"].sum()) == int(crashed["offsets"].sum()) == EVENTS
    assert len(clean["offsets"]) == PARTITIONS
    assert clean["version"][0] == crashed["version"][0] == EVENTS // BATCH
    assert set(clean) == set(crashed)
    diffs = {}
    for key in clean:
        a, b = clean[key], crashed[key]
        assert a.shape == b.shape, key
        if a.dtype.kind == "f":
            diffs[key] = float(np.abs(a.astype(np.float64) - b).max(initial=0.0))
        else:
            assert np.array_equal(a, b), key
    assert max(diffs.values()) == 0.0, diffs  # bitwise, not within a tolerance
