"""FastPartitionRecords yields what kafka-python's PartitionRecords yields, and fails as it does.

Both readers get the same fetched bytes (built with kafka-python's own record builders, so
the test does not depend on our idea of the format), are drained with the same ``take(n)``
calls, and must agree on every ConsumerRecord, on the exception type at the same point, and on
the counters the fetcher reads afterwards (next fetch offset, records and bytes read, leader
epoch). The real consumer path (poll from the tansu broker) is covered by the source's
integration tests, which run with the fast reader installed.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer
from kafka.consumer.fetcher import Fetcher
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from pipeline.source.records import FastPartitionRecords, install

TP = TopicPartition("clicks", 3)

_bytes_or_none = st.one_of(
    st.none(),
    st.binary(max_size=40),
    # a length varint of three bytes (hypothesis is slow to draw long random binaries)
    st.integers(min_value=8_200, max_value=20_000).map(lambda n: bytes(range(256)) * (n // 256)),
)
_header = st.tuples(st.text(max_size=6), st.one_of(st.none(), st.binary(max_size=20)))
_record = st.tuples(
    st.integers(min_value=0, max_value=3_000_000),  # timestamp delta: 1, 2 and 3-byte varints
    _bytes_or_none,
    _bytes_or_none,
    st.lists(_header, max_size=3),
)
_batch = st.tuples(
    st.sampled_from([2, 2, 2, 1, 0]),  # message format
    st.sampled_from([0, 1, 2, 3, 4]),  # none, gzip, snappy, lz4, zstd (v0/v1: none for the last 2)
    st.lists(_record, min_size=1, max_size=12),
    st.integers(min_value=0, max_value=20_000),  # gap before the batch's base offset
    st.sampled_from([0, 0, 0x08, 0x20]),  # attribute bits: none, log-append time, control
)


def _set_attributes(buf: bytes, bits: int) -> bytes:
    """Set v2 batch attribute bits and recompute the CRC, as a broker would write them."""
    out = bytearray(buf)
    offset = DefaultRecordBatch.ATTRIBUTES_OFFSET
    (attrs,) = struct.unpack_from(">h", out, offset)
    struct.pack_into(">h", out, offset, attrs | bits)
    crc = calc_crc32c(bytes(out[offset:]))
    struct.pack_into(">I", out, DefaultRecordBatch.CRC_OFFSET, crc)
    return bytes(out)


def _build(batches: list[Any], base_ts: int = 1_700_000_000_000) -> tuple[bytes, int]:
    parts = []
    offset = 0
    for magic, codec, records, gap, bits in batches:
        offset += gap
        # zstd is v2-only; building v0 lz4 needs xxhash
        kept_codec = 0 if magic < 2 and codec >= 3 else codec
        builder = MemoryRecordsBuilder(
            magic=magic, compression_type=kept_codec, batch_size=1 << 24, offset=offset
        )
        for ts_delta, key, value, headers in records:
            kept = headers if magic == 2 else []  # v0/v1 records have no headers
            builder.append(timestamp=base_ts + ts_delta, key=key, value=value, headers=kept)
        builder.close()
        buf = bytes(builder.buffer())
        if magic == 2 and bits:
            buf = _set_attributes(buf, bits)
        parts.append(buf)
        offset += len(records)
    return b"".join(parts), offset


def _drain(cls: Any, data: bytes, fetch_offset: int, takes: list[int], crc: bool) -> Any:
    part = cls(fetch_offset, TP, MemoryRecords(data), check_crcs=crc)
    seen: list[Any] = []
    for n in [*takes, None, None]:
        if not part:  # drained: the fetcher takes no more from it
            break
        try:
            seen.append(("records", part.take(n)))
        except Exception as err:  # compared by type below
            seen.append(("error", type(err).__name__))
    return seen, (part.next_fetch_offset, part.records_read, part.bytes_read, part.leader_epoch)


def _agree(data: bytes, fetch_offset: int, takes: list[int], crc: bool = True) -> Any:
    stock = _drain(Fetcher.PartitionRecords, data, fetch_offset, takes, crc)
    fast = _drain(FastPartitionRecords, data, fetch_offset, takes, crc)
    assert fast == stock
    return fast


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(_batch, min_size=1, max_size=4),
    skip=st.integers(min_value=0, max_value=30),
    takes=st.lists(st.integers(min_value=1, max_value=7), max_size=4),
)
@example(  # 8,192 records: offset deltas of one, two and three bytes
    batches=[(2, 0, [(i, None, b"v", []) for i in range(8_200)], 0, 0)], skip=0, takes=[]
)
def test_both_readers_yield_the_same_records(batches: Any, skip: int, takes: list[int]) -> None:
    data, end = _build(batches)
    first = batches[0][3]
    (seen, counters) = _agree(data, first + skip, takes)
    records = [r for kind, chunk in seen if kind == "records" for r in chunk]
    assert all(kind == "records" for kind, _ in seen)
    # the values prove the reader is not trivially empty: the data records after the skip
    assert [r.offset for r in records] == sorted({r.offset for r in records})
    assert all(r.offset >= first + skip for r in records)
    assert counters[0] >= min(end, first + skip)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(_batch, min_size=1, max_size=2),
    cut=st.integers(min_value=0, max_value=1 << 16),
    flip=st.integers(min_value=0, max_value=1 << 16),
    crc=st.booleans(),
)
def test_both_readers_fail_alike_on_damaged_bytes(
    batches: Any, cut: int, flip: int, crc: bool
) -> None:
    data, _ = _build(batches)
    damaged = bytearray(data[: len(data) - cut % max(1, len(data) // 3)])
    if damaged:
        damaged[flip % len(damaged)] ^= 0x5A
    _agree(bytes(damaged), 0, [3], crc)


def test_a_record_whose_declared_size_disagrees_is_corrupt() -> None:
    data, _ = _build([(2, 0, [(0, b"k", b"value", [])], 0, 0)])
    # the record's length varint is the first byte after the 61-byte header: 2 * size
    broken = bytearray(data)
    broken[61] += 2  # one byte more than the record holds
    seen, _ = _agree(bytes(broken), 0, [], crc=False)
    assert seen[0] == ("error", "CorruptRecordError")


def test_install_sets_the_reader_on_one_consumer_only() -> None:
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5))
    other = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5))
    try:
        assert install(consumer) is True
        assert consumer._fetcher.PartitionRecords is FastPartitionRecords
        assert other._fetcher.PartitionRecords is Fetcher.PartitionRecords
        assert install(consumer) is False  # already replaced: not the stock class any more
    finally:
        consumer.close()
        other.close()


def test_an_untested_kafka_python_keeps_its_own_reader_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import kafka

    from pipeline.source import records

    monkeypatch.setattr(kafka, "__version__", "3.9.0")
    monkeypatch.setattr(records, "_warned_version", [])
    consumers = [KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5)) for _ in "ab"]
    try:
        with caplog.at_level("WARNING", logger="pipeline.source.records"):
            assert [install(c) for c in consumers] == [False, False]
        assert all(c._fetcher.PartitionRecords is Fetcher.PartitionRecords for c in consumers)
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelname == "WARNING" and r.name == "pipeline.source.records"
        ]
        assert len(warnings) == 1
        assert "kafka-python 3.9.0 is not one the fast record reader was tested on" in warnings[0]
    finally:
        for c in consumers:
            c.close()


def test_the_installed_kafka_python_is_a_tested_one() -> None:
    import kafka

    from pipeline.source.records import TESTED_KAFKA_PYTHON

    assert kafka.__version__ in TESTED_KAFKA_PYTHON


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4])
def test_a_fetch_of_many_events_reads_every_payload(codec: int) -> None:
    values = [f'{{"label": {i % 2}, "c1": "{i:08x}"}}'.encode() for i in range(5_000)]
    batches = [(2, codec, [(i, None, v, []) for i, v in enumerate(values)], 0, 0)]
    data, _ = _build(batches)
    part = FastPartitionRecords(0, TP, MemoryRecords(data))
    got = part.take()
    assert [r.value for r in got] == values
    assert [r.offset for r in got] == list(range(5_000))
    assert got[4_999].timestamp == 1_700_000_000_000 + 4_999
    assert (part.next_fetch_offset, part.records_read) == (5_000, 5_000)


def test_bytes_left_after_the_declared_records_are_corrupt() -> None:
    records = [(0, None, b"one", []), (1, None, b"two", [])]
    data = bytearray(_build([(2, 0, records, 0, 0)])[0])
    struct.pack_into(">i", data, 57, 1)  # the batch header's record count: 1 of the 2
    seen, _ = _agree(bytes(data), 0, [], crc=False)
    assert [r.value for r in seen[0][1]] == [b"one"]
    assert seen[1] == ("error", "CorruptRecordError")
