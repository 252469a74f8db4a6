"""Micro-benchmark: CPU per record of the fast record reader against kafka-python's, per codec.

``python -m benchmarks.record_reader_codecs``: 4,000 Criteo payloads in 8 v2 batches of 500,
built by kafka-python with no compression, gzip, snappy, lz4 and zstd, read by each reader
(best of 9, process CPU time).
"""

from __future__ import annotations

import itertools
import time

from kafka.consumer.fetcher import Fetcher
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.structs import TopicPartition

from pipeline.events.formats import read_messages
from pipeline.source.records import FastPartitionRecords
from tests.integration.conftest import CRITEO_TRAIN

CODECS = ((0, "none"), (1, "gzip"), (2, "snappy"), (3, "lz4"), (4, "zstd"))


def batches(codec: int, values: list[bytes], per_batch: int = 500) -> bytes:
    parts = []
    for offset in range(0, len(values), per_batch):
        builder = MemoryRecordsBuilder(
            magic=2, compression_type=codec, batch_size=1 << 24, offset=offset
        )
        for value in values[offset : offset + per_batch]:
            builder.append(timestamp=1, key=None, value=value, headers=[])
        builder.close()
        parts.append(bytes(builder.buffer()))
    return b"".join(parts)


def main() -> None:
    values = list(itertools.islice(itertools.cycle(read_messages(CRITEO_TRAIN)), 4000))
    tp = TopicPartition("t", 0)
    for codec, name in CODECS:
        data = batches(codec, values)
        out = {}
        for label, cls in (
            ("kafka-python", Fetcher.PartitionRecords),
            ("fast", FastPartitionRecords),
        ):
            best = float("inf")
            for _ in range(9):
                t = time.process_time()
                records = cls(0, tp, MemoryRecords(data)).take()
                best = min(best, time.process_time() - t)
            assert len(records) == len(values)
            out[label] = best / len(values) * 1e6
        print(
            f"{name:7s} kafka-python {out['kafka-python']:.2f} µs/record, "
            f"fast {out['fast']:.2f} µs/record ({len(data):,} bytes)"
        )


if __name__ == "__main__":
    main()
