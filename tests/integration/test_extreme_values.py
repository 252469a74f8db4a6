"""Issue 21 #1: a valid event with an extreme timestamp no longer stops training.

``9999-12-31T23:59:59-14:00`` and ``0001-01-01T00:00:00+14:00`` pass validation; the source
process's wire used to rebuild them through UTC (outside years 1..9999) and the trainer died
with ``OverflowError`` in the default ``decode_in: process`` mode, on every restart. Both
modes now train them, with the same featurised values.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.events.generators import generate
from pipeline.events.replay import replay
from pipeline.testing.jobs import shipped_job
from pipeline.training.job import TrainJob

pytestmark = pytest.mark.integration
EXTREME = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"]


@pytest.mark.parametrize("decode_in", ["process", "thread"])
def test_extreme_timestamps_train_in_every_decode_mode(
    decode_in: str, bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    records = [{**r, "timestamp": str(r["timestamp"])} for r in generate("transaction", 200, 5)]
    for i, stamp in zip((60, 140), EXTREME, strict=True):
        records[i] = {**records[i], "timestamp": stamp}
    topic = new_topic(1)
    assert replay(bootstrap, topic, ((None, r) for r in records), progress=False) == 200
    config = shipped_job(
        "fraud",
        bootstrap,
        topic,
        tmp_path / "store",
        group_id=f"extreme-{decode_in}",
        max_events=64,
        decode_in=decode_in,
    )
    stamps: list[float] = []
    job = TrainJob(config.to_spec())
    job.batch_hooks.append(
        lambda b, r: stamps.extend(
            datetime.fromisoformat(t).timestamp() if isinstance(t, str) else t.timestamp()
            for t in (b.events.column("timestamp") if hasattr(b.events, "column")
                      else [e.timestamp for e in b.events])
        )
    )  # fmt: skip
    with job:
        summary = job.run(max_events=200, idle_timeout_s=30)
    assert (summary.events, summary.dead_letters) == (200, 0)
    assert stamps[60] == 253402351199.0 and stamps[140] == -62135647200.0
    assert np.isfinite(summary.log_loss)
