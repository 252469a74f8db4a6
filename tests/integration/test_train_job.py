"""The main job on the real broker: the Criteo file is trained in order, every event once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.events.kinds import CtrEvent
from pipeline.events.replay import replay
from pipeline.testing.jobs import shipped_job
from pipeline.training.job import TrainJob

pytestmark = pytest.mark.integration

BAD: list[bytes] = [
    b"{not json",
    b"",
    b'{"label": 0}',
    b'{"label": "yes"}',
    b'{"label": 0, "i1": 1e400}',
    b'{"label": 1, "colour": "red"}',
]


def test_criteo_trained_in_order_exactly_once_with_dead_letters(
    shared_data: Path, bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    lines = (shared_data / "criteo" / "train.txt").read_text().splitlines()
    assert len(lines) == 1999
    events = [CtrEvent.from_criteo_line(line) for line in lines]
    topic = new_topic(1)
    messages: list[tuple[bytes, object]] = []
    bad_sent = 0
    for i, event in enumerate(events):
        messages.append((str(i).encode(), event.model_dump(mode="json")))
        if i % 100 == 50:  # 1% malformed, mixed in
            messages.append((b"bad", BAD[bad_sent % len(BAD)]))
            bad_sent += 1
    assert replay(bootstrap, topic, messages, progress=False) == len(messages)

    config = shipped_job(
        "ctr", bootstrap, topic, tmp_path / "store", group_id="t-train", max_events=256
    )
    keys: list[bytes | None] = []
    labels: list[float] = []
    job = TrainJob(config.to_spec())
    job.batch_hooks.append(lambda b, r: (keys.extend(b.keys), labels.extend(r.labels.tolist())))
    with job:
        summary = job.run(max_events=1999, idle_timeout_s=30)
        offsets = job.source.snapshot() if job.source else {}
        assert job.trainer is not None
        scored = job.trainer.metrics.count if hasattr(job.trainer.metrics, "count") else None
    assert summary.events == 1999
    assert [int(k) for k in keys if k is not None] == list(range(1999))  # in order, each once
    assert labels == [float(e.label) for e in events]
    assert summary.dead_letters == bad_sent == 20
    assert offsets == {(topic, 0): len(messages)}
    if scored is not None:
        assert scored == 1999
    assert 0.5 < summary.auc <= 1.0 and np.isfinite(summary.log_loss)
