"""The job's look-ahead prefetch pauses while it finds nothing to load, and changes no value."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.events.kinds import CtrEvent
from pipeline.events.replay import replay
from pipeline.testing.jobs import shipped_job
from pipeline.training.job import TrainJob
from pipeline.training.lookahead import LookAhead

pytestmark = pytest.mark.integration


def run(
    bootstrap: str, topic: str, path: Path, n: int, always: bool
) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor], LookAhead]:
    config = shipped_job("ctr", bootstrap, topic, path, group_id=f"g-{path.name}", max_events=16)
    job = TrainJob(config.to_spec())
    if always:
        job.lookahead = LookAhead(quiet_after=10**9)
    with job:
        summary = job.run(max_events=n, idle_timeout_s=30)
        assert summary.events == n and job.store is not None and job.trainer is not None
        rows = {}
        for table in ("cat", "num", "linear"):
            parts = list(job.store.export_rows(table))
            ids = np.concatenate([p[0] for p in parts])
            emb = np.concatenate([p[1]["emb"] for p in parts])
            rows[table] = emb[np.argsort(ids)]
        dense = {k: v.clone() for k, v in job.trainer.model.state_dict().items()}
    return rows, dense, job.lookahead


def test_lookahead_pauses_on_a_hot_stream_and_the_model_is_the_same(
    shared_data: Path, bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    lines = (shared_data / "criteo" / "train.txt").read_text().splitlines()[:96]
    events = [CtrEvent.from_criteo_line(line).model_dump(mode="json") for line in lines]
    stream = events * 8  # after the first pass every row the stream reads is in DRAM
    topic = new_topic(1)
    assert replay(bootstrap, topic, [(None, e) for e in stream], progress=False) == len(stream)

    n = len(stream)
    rows, dense, adaptive = run(bootstrap, topic, tmp_path / "adaptive", n, False)
    rows_always, dense_always, always = run(bootstrap, topic, tmp_path / "always", n, True)

    assert always.skipped == 0
    # 48 batches: the first pass's 6 load new ids, then 8 quiet ones pause the look-ahead
    assert adaptive.paused and adaptive.skipped > 20
    assert rows.keys() == rows_always.keys()
    for table in rows:  # placement never changes a value: bitwise the same model
        np.testing.assert_array_equal(rows[table], rows_always[table])
    for name, value in dense.items():
        assert torch.equal(value, dense_always[name]), name
