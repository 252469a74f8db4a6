"""Compressed topics: gzip, snappy, lz4 and zstd batches from the real broker are trained.

One topic, four partitions, each written by a producer with its own codec, so one training run
reads all four kinds of batch (through the fast record reader, in the source process). A plain
consumer first proves the broker really hands back batches in each codec.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.record.default_records import DefaultRecordBatch

from pipeline.events.kinds import CtrEvent
from pipeline.events.replay import encode_value
from pipeline.testing.jobs import shipped_job
from pipeline.training.job import TrainJob

pytestmark = pytest.mark.integration
CODECS = ("gzip", "snappy", "lz4", "zstd")  # partition p is written with CODECS[p]
CODEC_IDS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _codecs_fetched(
    bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> dict[int, set[int]]:
    seen: dict[int, set[int]] = {}
    original = DefaultRecordBatch._maybe_uncompress

    def spy(self: Any) -> None:
        seen.setdefault(self.compression_type, set()).add(self.base_offset)
        original(self)

    monkeypatch.setattr(DefaultRecordBatch, "_maybe_uncompress", spy)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(len(CODECS))])
        consumer.seek_to_beginning()
        got = 0
        for _ in range(100):
            got += sum(len(v) for v in consumer.poll(timeout_ms=200).values())
            if got >= 1999:
                break
    finally:
        consumer.close()
        monkeypatch.setattr(DefaultRecordBatch, "_maybe_uncompress", original)
    return seen


def test_a_topic_with_every_codec_trains_each_event_once(
    criteo_lines: list[str],
    bootstrap: str,
    new_topic: Callable[[int], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = [CtrEvent.from_criteo_line(line) for line in criteo_lines]
    topic = new_topic(len(CODECS))
    for partition, codec in enumerate(CODECS):
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, compression_type=codec, linger_ms=20, acks="all"
        )
        for i in range(partition, len(events), len(CODECS)):
            value = encode_value(events[i].model_dump(mode="json"))
            producer.send(topic, value=value, key=str(i).encode(), partition=partition)
        producer.flush()
        producer.close()

    fetched = _codecs_fetched(bootstrap, topic, monkeypatch)
    assert set(fetched) == {CODEC_IDS[c] for c in CODECS}  # the broker kept every codec

    config = shipped_job(
        "ctr", bootstrap, topic, tmp_path / "store", group_id="t-compressed", max_events=256
    )
    keys: list[int] = []
    job = TrainJob(config.to_spec())
    job.batch_hooks.append(lambda b, r: keys.extend(int(k) for k in b.keys if k is not None))
    with job:
        summary = job.run(max_events=len(events), idle_timeout_s=30)
        offsets = job.source.snapshot() if job.source else {}
    assert summary.events == len(events) == 1999
    assert sorted(keys) == list(range(1999))  # each event once
    for partition in range(len(CODECS)):  # and in order within each partition
        mine = [k for k in keys if k % len(CODECS) == partition]
        assert mine == sorted(mine)
        assert offsets[(topic, partition)] == len(range(partition, 1999, len(CODECS)))
    assert summary.dead_letters == 0
    assert 0.5 < summary.auc <= 1.0 and np.isfinite(summary.log_loss)
