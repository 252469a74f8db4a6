"""A faster reader of Kafka record batches (message format v2) for kafka-python's consumer.

kafka-python turns each fetched record into a ``DefaultRecord`` through seven calls of its
varint decoder and a dozen property reads, then into a ``ConsumerRecord``: about 7 µs of CPU
per record on this project's machine, a third of what the source process spends on an event.
:class:`FastPartitionRecords` reads a v2 batch's records in one loop that decodes one- and
two-byte varints inline, and yields the very same ``ConsumerRecord`` tuples, with the same
offsets, counters and errors. A consumer with deserializers or ``read_committed`` isolation
goes through kafka-python's own code unchanged; legacy batches (v0/v1) are read record by
record, as kafka-python reads them.

It replaces nothing globally: :func:`install` sets the class on one consumer's fetcher, which
builds its ``PartitionRecords`` through ``self.PartitionRecords``. ``PartitionRecords`` is
private to kafka-python, so :func:`install` does so only on the releases in
:data:`TESTED_KAFKA_PYTHON` (those the contract test ``tests/unit/pipeline/source/
test_kafka_records.py`` has run on); on any other it logs one warning and leaves kafka-python's
reader in place. Compressed batches (gzip, snappy, lz4, zstd) are decompressed by kafka-python's
codec, then read by the same loop. ::

    fetch response ─► MemoryRecords ─► batch (CRC checked as before) ─► magic 2 data batch?
                                                    │ yes                      │ no
                                                    ▼                          ▼
                                     one loop over the records      control: skipped
                                                    │               v0/v1: kafka-python's
                                                    ▼                      records
                                   ConsumerRecord(topic, partition, epoch, offset, ...)

Record layout (inside a v2 batch, after the 61-byte header; varints are zigzag)::

    length | attributes | timestampDelta | offsetDelta | keyLen | key | valueLen | value
           | headerCount | (keyLen key valueLen value) * headerCount

>>> from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
>>> from kafka.structs import TopicPartition
>>> builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20)
>>> _ = builder.append(timestamp=1000, key=None, value=b"hello", headers=[])
>>> _ = builder.append(timestamp=1005, key=b"k", value=b"world", headers=[("h", b"v")])
>>> builder.close()
>>> records = MemoryRecords(builder.buffer())
>>> part = FastPartitionRecords(0, TopicPartition("clicks", 0), records)
>>> [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in part.take()]
[(0, 1000, None, b'hello', []), (1, 1005, b'k', b'world', [('h', b'v')])]
>>> part.next_fetch_offset
2
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Final

import kafka
from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.util import decode_varint

__all__ = ["TESTED_KAFKA_PYTHON", "FastPartitionRecords", "install"]

log = logging.getLogger(__name__)

_BASE: Any = Fetcher.PartitionRecords
_READ_UNCOMMITTED: Final = 0
_new_tuple = tuple.__new__
_TIMESTAMP_TYPE_MASK: Final = 0x08
_CONTROL_MASK: Final = 0x20

TESTED_KAFKA_PYTHON: Final = frozenset({"3.0.12"})
"""kafka-python releases the contract test has run on; pyproject.toml pins the same range."""

_warned_version: list[str] = []  # the one unknown-version warning per process


class FastPartitionRecords(_BASE):  # type: ignore[misc]
    """kafka-python's ``Fetcher.PartitionRecords``, reading v2 batches in one loop.

    Same constructor, same results; see the module docstring.
    """

    def _unpack_records(
        self, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any
    ) -> Iterator[Any]:
        if (
            key_deserializer is not None
            or value_deserializer is not None
            or self.isolation_level != _READ_UNCOMMITTED
        ):
            yield from super()._unpack_records(tp, records, key_deserializer, value_deserializer)
            return
        try:
            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(
                        f"Record batch for partition {self.topic_partition} at offset "
                        f"{batch.base_offset} failed crc check"
                    )
                if batch.magic != 2:
                    yield from self._legacy_records(tp, batch)
                else:
                    self.leader_epoch = batch.leader_epoch
                    if batch.attributes & _CONTROL_MASK:  # a transaction marker, not data
                        self.next_fetch_offset = batch.next_offset
                    else:
                        yield from self._v2_records(tp, batch)
                batch = records.next_batch()
            if last_batch is not None and last_batch.magic == 2:
                # v2 keeps the batch's last offset even when compaction removed that record
                self.next_fetch_offset = last_batch.next_offset
            self.drain()
        except StopIteration as err:  # as kafka-python: a generator must not leak it
            log.exception("StopIteration raised unpacking messageset")
            raise RuntimeError("StopIteration raised unpacking messageset") from err

    def _legacy_records(self, tp: Any, batch: Any) -> Iterator[Any]:
        """Message formats v0 and v1, as kafka-python reads them (records carry a CRC)."""
        for record in batch:
            if self.check_crcs and not record.validate_crc():
                raise CorruptRecordError(
                    f"Record for partition {self.topic_partition} at offset {record.offset} "
                    "failed crc check"
                )
            key, value, headers = record.key, record.value, record.headers
            self.records_read += 1
            self.bytes_read += record.size_in_bytes
            self.next_fetch_offset = record.offset + 1
            yield ConsumerRecord(
                tp.topic,
                tp.partition,
                self.leader_epoch,
                record.offset,
                record.timestamp,
                record.timestamp_type,
                key,
                value,
                headers,
                record.checksum,
                -1 if key is None else len(key),
                -1 if value is None else len(value),
                _header_size(headers),
            )

    def _v2_records(self, tp: Any, batch: Any) -> Iterator[Any]:
        batch._maybe_uncompress()
        buf = bytes(batch._buffer)  # one copy per batch; slices of bytes are bytes, no second copy
        pos = batch._pos
        (base_offset, _, _, _, _, attrs, _, first_ts, max_ts, _, _, _, count) = batch._header_data
        ts_type = 1 if attrs & _TIMESTAMP_TYPE_MASK else 0
        topic, partition, epoch = tp.topic, tp.partition, self.leader_epoch
        try:
            for _ in range(count):
                # each varint: one byte, two bytes, or kafka-python's general decoder
                b = buf[pos]
                if b < 0x80:
                    length = (b >> 1) ^ -(b & 1)
                    pos += 1
                elif buf[pos + 1] < 0x80:
                    v = (b & 0x7F) | (buf[pos + 1] << 7)
                    length = (v >> 1) ^ -(v & 1)
                    pos += 2
                else:
                    length, pos = decode_varint(buf, pos)
                start = pos
                if buf[pos] < 0x80:  # attributes: unused
                    pos += 1
                else:
                    _, pos = decode_varint(buf, pos)
                b = buf[pos]
                if b < 0x80:
                    ts_delta = (b >> 1) ^ -(b & 1)
                    pos += 1
                elif buf[pos + 1] < 0x80:
                    v = (b & 0x7F) | (buf[pos + 1] << 7)
                    ts_delta = (v >> 1) ^ -(v & 1)
                    pos += 2
                else:
                    ts_delta, pos = decode_varint(buf, pos)
                b = buf[pos]
                if b < 0x80:
                    offset_delta = (b >> 1) ^ -(b & 1)
                    pos += 1
                elif buf[pos + 1] < 0x80:
                    v = (b & 0x7F) | (buf[pos + 1] << 7)
                    offset_delta = (v >> 1) ^ -(v & 1)
                    pos += 2
                else:
                    offset_delta, pos = decode_varint(buf, pos)
                b = buf[pos]
                if b < 0x80:
                    key_len = (b >> 1) ^ -(b & 1)
                    pos += 1
                else:
                    key_len, pos = decode_varint(buf, pos)
                if key_len >= 0:
                    key: bytes | None = buf[pos : pos + key_len]
                    pos += key_len
                else:
                    key = None
                b = buf[pos]
                if b < 0x80:
                    value_len = (b >> 1) ^ -(b & 1)
                    pos += 1
                elif buf[pos + 1] < 0x80:
                    v = (b & 0x7F) | (buf[pos + 1] << 7)
                    value_len = (v >> 1) ^ -(v & 1)
                    pos += 2
                else:
                    value_len, pos = decode_varint(buf, pos)
                if value_len >= 0:
                    value: bytes | None = buf[pos : pos + value_len]
                    pos += value_len
                else:
                    value = None
                b = buf[pos]
                if b < 0x80:
                    header_count = (b >> 1) ^ -(b & 1)
                    pos += 1
                else:
                    header_count, pos = decode_varint(buf, pos)
                if header_count < 0:
                    raise CorruptRecordError(
                        f"Found invalid number of record headers {header_count}"
                    )
                headers: list[tuple[str, bytes | None]] = []
                if header_count:
                    for _ in range(header_count):
                        h_key_len, pos = decode_varint(buf, pos)
                        if h_key_len < 0:
                            raise CorruptRecordError(
                                f"Invalid negative header key size {h_key_len}"
                            )
                        h_key = buf[pos : pos + h_key_len].decode("utf-8")
                        pos += h_key_len
                        h_value_len, pos = decode_varint(buf, pos)
                        h_value: bytes | None = None
                        if h_value_len >= 0:
                            h_value = buf[pos : pos + h_value_len]
                            pos += h_value_len
                        headers.append((h_key, h_value))
                if pos - start != length:
                    raise CorruptRecordError(
                        f"Invalid record size: expected to read {length} bytes in record "
                        f"payload, but instead read {pos - start}"
                    )
                offset = base_offset + offset_delta
                self.records_read += 1
                self.bytes_read += length
                self.next_fetch_offset = offset + 1
                yield _new_tuple(  # ConsumerRecord(...) without its Python-level __new__
                    ConsumerRecord,
                    (
                        topic,
                        partition,
                        epoch,
                        offset,
                        max_ts if ts_type else first_ts + ts_delta,
                        ts_type,
                        key,
                        value,
                        headers,
                        None,
                        -1 if key is None else len(key),
                        -1 if value is None else len(value),
                        _header_size(headers),
                    ),
                )
        except (ValueError, IndexError) as err:
            raise CorruptRecordError(f"Found invalid record structure: {err!r}") from err
        if pos != len(buf):
            raise CorruptRecordError(
                f"{len(buf) - pos} unconsumed bytes after all records consumed"
            )


def _header_size(headers: list[tuple[str, bytes | None]] | None) -> int:
    if not headers:
        return -1
    return sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0) for k, v in headers)


def install(consumer: Any) -> bool:
    """Make ``consumer`` (a kafka-python ``KafkaConsumer``) read batches with this module.

    Returns False, and changes nothing, on a kafka-python release not in
    :data:`TESTED_KAFKA_PYTHON` (one warning per process) or when the consumer's fetcher is not
    the kind this module was written against.
    """
    version = str(getattr(kafka, "__version__", "unknown"))
    if version not in TESTED_KAFKA_PYTHON:
        if not _warned_version:
            _warned_version.append(version)
            log.warning(
                "kafka-python %s is not one the fast record reader was tested on (%s); "
                "records are read by kafka-python's own reader",
                version,
                ", ".join(sorted(TESTED_KAFKA_PYTHON)),
            )
        return False
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or getattr(fetcher, "PartitionRecords", None) is not _BASE:
        log.info("kafka-python's fetcher is not the expected one; records are read by it")
        return False
    fetcher.PartitionRecords = FastPartitionRecords
    return True
