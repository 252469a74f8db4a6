"""Declared schemas: the generated validator, both decode paths, and extreme-but-valid values.

* The shipped schema files (``configs/schemas/ctr.yaml``, ``transaction.yaml``) generate
  validators with exactly the built-in models' verdicts, on the fuzzing corpus.
* For a schema the project does not ship (every field type), the msgspec fast path and the
  generated pydantic model agree, and every value that passes validation is featurised to
  the same batch in every decode mode: the thread source's Structs, the pydantic models, and
  the process source's columns after a trip through a wire frame. Extreme values are drawn
  on purpose: timestamps at both ends of Python's range with +-14:00 offsets, epoch numbers
  at the ends of years 1..9999, the largest and smallest floats, int64 ends, long and
  non-ASCII strings.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from configs.schema import load_schema
from pipeline.errors import DecodeError
from pipeline.events.fast_decode import FastDecoder
from pipeline.events.kinds import EVENT_KINDS, decode
from pipeline.events.schema import (
    MAX_EPOCH_SECONDS,
    MIN_EPOCH_SECONDS,
    EventSchema,
    FieldSchema,
    schema_model,
)
from pipeline.features.featurizer import Batch, Featurizer
from pipeline.features.spec import (
    AggregateSpec,
    BucketizeSpec,
    CategoricalSpec,
    CrossSpec,
    DenseSpec,
    FeatureSpec,
    MultiHotSpec,
    TimePartSpec,
)
from pipeline.source.kafka import SourceBatch
from pipeline.source.wire import decode_batch, encode_batch
from tests.integration.fuzz_payloads import malformed_payloads, valid_payloads

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def verdict(fn: Any, payload: bytes, names: tuple[str, ...]) -> tuple[Any, ...]:
    try:
        event = fn(payload)
    except DecodeError as err:
        return ("error", err.failure, str(err), err.field)
    out: list[Any] = ["ok"]
    for name in names:
        value = getattr(event, name)
        out.append((type(value).__name__, value))
        if isinstance(value, datetime):
            out.append(value.utcoffset())
    return tuple(out)


@pytest.mark.parametrize("kind", sorted(EVENT_KINDS))
@SETTINGS
@given(data=st.data())
def test_shipped_schema_files_give_the_built_in_verdicts(kind: str, data: st.DataObject) -> None:
    schema = load_schema(kind)
    names = tuple(EVENT_KINDS[kind].model_fields)
    assert schema.names == names
    fast = FastDecoder(kind, schema)
    for payload in (data.draw(valid_payloads(kind)), data.draw(malformed_payloads(kind))):
        expected = verdict(lambda p: decode(kind, p), payload.data, names)
        assert verdict(lambda p: decode(kind, p, schema), payload.data, names) == expected
        assert verdict(fast, payload.data, names) == expected


F = FieldSchema
MIXED = EventSchema(
    "mixed",
    (
        F("label", "int", ge=0, le=1),
        F("user", "string", pattern="^[0-9a-f]{8}$"),
        F("device", "string", max_length=20_000),
        F("count", "int", nullable=True),
        F("price", "float", nullable=True),
        F("flag", "bool"),
        F("seen_at", "timestamp", format="iso"),
        F("ts_ms", "timestamp", unit="ms"),
        F("tags", "list", items="string", max_length=8),
        F("ref", "int", required=False, default=7),
        F("note", "string", required=False),
    ),
)
NAMES = MIXED.names

ISO_ENDS = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999+14:00",
    "1970-01-01T00:00:00Z",
]


def _iso(stamp: datetime, minutes: int) -> str:
    return stamp.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat()


ISO = st.sampled_from(ISO_ENDS) | st.builds(
    _iso,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),  # noqa: DTZ001
    st.integers(-14 * 60, 14 * 60),
)
FLOATS = st.sampled_from([1.7976931348623157e308, -1.7976931348623157e308, 5e-324, 0.0]) | (
    st.floats(allow_nan=False, allow_infinity=False)
)
TEXT = st.text(max_size=40) | st.sampled_from(["é" * 20_000, "\u0660\U0001f600", ""])
RECORDS = st.fixed_dictionaries(
    {
        "label": st.integers(0, 1),
        "user": st.from_regex(r"\A[0-9a-f]{8}\Z"),
        "device": TEXT.filter(lambda t: len(t) <= 20_000),
        "count": st.none() | st.integers(-(2**63), 2**63 - 1),
        "price": st.none() | FLOATS,
        "flag": st.booleans(),
        "seen_at": ISO,
        "ts_ms": st.sampled_from([MIN_EPOCH_SECONDS * 1000, MAX_EPOCH_SECONDS * 1000, 0])
        | st.integers(MIN_EPOCH_SECONDS * 1000, MAX_EPOCH_SECONDS * 1000),
        "tags": st.lists(TEXT, max_size=8),
    },
    optional={"ref": st.integers(-(2**63), 2**63 - 1), "note": st.none() | TEXT},
)

SPEC = FeatureSpec(
    label="label",
    time_field="seen_at",
    epoch_units=(("ts_ms", "ms"),),
    sparse=(
        CategoricalSpec("user", "t", "user"),
        CategoricalSpec("device", "t", "device"),
        CategoricalSpec("count_id", "t", "count", "int"),
        CategoricalSpec("flag", "t", "flag", "int"),
        CategoricalSpec("note", "t", "note"),
        CrossSpec("user_x_flag", "t", ("user", "flag")),
        TimePartSpec("hour", "t", "hour_of_day"),
        TimePartSpec("weekday_ms", "t", "day_of_week", field="ts_ms"),
        BucketizeSpec("price_b", "t", "price", log_step=0.5),
        MultiHotSpec("tags", "tags", "tags"),
    ),
    aggregates=(
        AggregateSpec("user_1d", ("user",), "price", window=1, key_type="str"),
        AggregateSpec("user_label", ("user",), "label", window=3, delay=1, key_type="str"),
    ),
    dense=(
        DenseSpec("price_z", field="price", standardize=True),
        DenseSpec("log_price", field="price", log1p=True),
        DenseSpec("count_z", field="count", standardize=True),
        DenseSpec("ms", field="ts_ms"),
        DenseSpec("user_mean", aggregate="user_1d", stat="mean", fill=-1.0),
        DenseSpec("user_z", aggregate="user_1d", stat="zscore"),
        DenseSpec("user_rate", aggregate="user_label", stat="rate"),
    ),
)


def featurise(events: Any) -> Batch:
    return Featurizer(SPEC).transform(events)


def through_a_frame(events: tuple[Any, ...]) -> Any:
    n = len(events)
    batch = SourceBatch(1, events, (None,) * n, (("t", 0, 0),) * n, (0,) * n, {})
    header, chunks = encode_batch(batch, NAMES, None, ())
    return decode_batch(json.loads(json.dumps(header)), b"".join(chunks)).events


def assert_same(a: Batch, b: Batch) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.dense, b.dense)
    assert a.sparse.keys() == b.sparse.keys()
    for table in a.sparse:
        x, y = a.sparse[table], b.sparse[table]
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_array_equal(x.values, y.values)  # type: ignore[union-attr]
            np.testing.assert_array_equal(x.offsets, y.offsets)  # type: ignore[union-attr]
    assert a.timestamps is not None and b.timestamps is not None
    np.testing.assert_array_equal(a.timestamps, b.timestamps)


@SETTINGS
@given(records=st.lists(RECORDS, min_size=1, max_size=6))
@example(
    records=[
        {
            "label": 1,
            "user": "04258293",
            "device": "é" * 20_000,
            "count": 2**63 - 1,
            "price": 1.7976931348623157e308,
            "flag": True,
            "seen_at": stamp,
            "ts_ms": ms,
            "tags": ["\U0001f600"],
        }
        for stamp in ISO_ENDS
        for ms in (MIN_EPOCH_SECONDS * 1000, MAX_EPOCH_SECONDS * 1000)
    ]
)
def test_every_valid_value_featurises_alike_in_every_decode_mode(
    records: list[dict[str, Any]],
) -> None:
    payloads = [json.dumps(r).encode() for r in records]
    fast = FastDecoder("mixed", MIXED)
    structs = tuple(fast(p) for p in payloads)
    assert fast.fast == len(payloads)  # the thread and process sources' fast path
    models = tuple(schema_model(MIXED).model_validate_json(p) for p in payloads)
    for s, m in zip(structs, models, strict=True):
        assert verdict(lambda _, s=s: s, b"", NAMES) == verdict(lambda _, m=m: m, b"", NAMES)
    thread = featurise(structs)
    assert_same(thread, featurise(models))
    assert_same(thread, featurise(through_a_frame(structs)))  # decode_in: process
    assert_same(thread, featurise(through_a_frame(models)))
    assert np.isfinite(thread.dense).all()
    assert thread.timestamps is not None and np.isfinite(thread.timestamps).all()
    expected = [datetime.fromisoformat(r["seen_at"]).timestamp() for r in records]
    assert thread.timestamps.tolist() == expected


def test_an_extreme_timestamp_survives_the_wire_with_its_offset() -> None:
    """Issue 21 #1: 9999-12-31T23:59:59-14:00 overflowed decoding a process frame."""
    fast = FastDecoder("transaction")
    payloads = [
        json.dumps(
            {
                "transaction_id": 1,
                "timestamp": stamp,
                "customer_id": 2,
                "terminal_id": 3,
                "amount": 1.0,
                "label": 0,
            }
        ).encode()
        for stamp in ISO_ENDS
    ]
    events = tuple(fast(p) for p in payloads)
    n = len(events)
    batch = SourceBatch(1, events, (None,) * n, (("t", 0, 0),) * n, (0,) * n, {})
    header, chunks = encode_batch(batch, tuple(EVENT_KINDS["transaction"].model_fields))
    back = decode_batch(header, b"".join(chunks)).events.column("timestamp")
    assert back == [datetime.fromisoformat(s) for s in ISO_ENDS]
    assert [b.utcoffset() for b in back] == [
        datetime.fromisoformat(s).utcoffset() for s in ISO_ENDS
    ]
    assert back[2].timestamp() == 253402351199.0


def test_an_epoch_past_year_9999_is_refused_with_a_reason() -> None:
    fast = FastDecoder("mixed", MIXED)
    record = {
        "label": 0,
        "user": "04258293",
        "device": "d",
        "count": None,
        "price": None,
        "flag": False,
        "seen_at": "2020-01-01T00:00:00Z",
        "ts_ms": (MAX_EPOCH_SECONDS + 1) * 1000,
        "tags": [],
    }
    with pytest.raises(DecodeError, match="value out of range for 'ts_ms'"):
        fast(json.dumps(record).encode())


def test_hex_looking_strings_stay_strings_and_optional_fields_get_defaults() -> None:
    fast = FastDecoder("mixed", MIXED)
    record = {
        "label": 0,
        "user": "04258293",
        "device": "d",
        "count": None,
        "price": 1.5,
        "flag": False,
        "seen_at": "2020-01-01T00:00:00Z",
        "ts_ms": 1,
        "tags": ["a"],
    }
    ev = fast(json.dumps(record).encode())
    assert (ev.user, ev.ref, ev.note) == ("04258293", 7, None)
    with pytest.raises(DecodeError, match="wrong type for 'user'"):
        fast(json.dumps({**record, "user": 4258293}).encode())


def test_a_field_name_pydantic_reserves_is_refused() -> None:
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="schema field 'model_dump'"):
        F("model_dump", "int")
    assert datetime(2020, 1, 1, tzinfo=UTC).year == 2020
