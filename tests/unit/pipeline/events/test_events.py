"""Event schemas: valid messages round-trip; a malformed one is a DecodeError naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import DecodeError, DecodeFailure, PipelineError, UnknownEventKindError
from pipeline.events.kinds import (
    EVENT_KINDS,
    CtrEvent,
    TransactionEvent,
    decode,
    encode,
    event_model,
    to_record,
)

CTR: dict[str, Any] = {"label": 1} | {f"i{k}": k for k in range(1, 14)}
CTR |= {f"c{k}": f"{k:08x}" for k in range(1, 27)}
TX: dict[str, Any] = {
    "transaction_id": 12,
    "timestamp": "2018-04-01T00:00:31Z",
    "customer_id": 596,
    "terminal_id": 3156,
    "amount": 57.16,
    "label": 0,
}


def payload(base: dict[str, Any], **changes: Any) -> bytes:
    record = dict(base)
    for key, value in changes.items():
        if value is _DELETE:
            del record[key]
        else:
            record[key] = value
    return json.dumps(record).encode()


_DELETE = object()


def test_valid_messages_decode() -> None:
    ctr = decode("ctr", payload(CTR))
    assert isinstance(ctr, CtrEvent)
    assert ctr.label == 1 and ctr.dense == tuple(range(1, 14)) and ctr.categorical[25] == "0000001a"
    tx = decode("transaction", payload(TX))
    assert isinstance(tx, TransactionEvent)
    assert tx.timestamp == datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC)
    assert tx.amount == 57.16
    # nulls are fine for Criteo features, and small negative counts occur in the data
    assert decode("ctr", payload(CTR, i1=None, i2=-1, c3=None)).dense[:2] == (None, -1)


def test_events_are_frozen() -> None:
    tx = decode("transaction", payload(TX))
    with pytest.raises(ValueError, match="frozen"):
        tx.amount = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kind", "message", "failure", "field"),
    [
        ("ctr", b"", DecodeFailure.EMPTY_PAYLOAD, None),
        ("ctr", b'{"label": 1,', DecodeFailure.BAD_JSON, None),
        ("ctr", b"\xff\xfe", DecodeFailure.BAD_JSON, None),
        ("ctr", b"[1, 2]", DecodeFailure.BAD_JSON, None),
        ("ctr", b"null", DecodeFailure.BAD_JSON, None),
        ("ctr", payload(CTR, label=_DELETE), DecodeFailure.MISSING_FIELD, "label"),
        ("ctr", payload(CTR, c26=_DELETE), DecodeFailure.MISSING_FIELD, "c26"),
        ("ctr", payload(CTR, referrer="x"), DecodeFailure.UNKNOWN_FIELD, "referrer"),
        ("ctr", payload(CTR, i4="12"), DecodeFailure.WRONG_TYPE, "i4"),
        ("ctr", payload(CTR, i4=1.5), DecodeFailure.WRONG_TYPE, "i4"),
        ("ctr", payload(CTR, label=True), DecodeFailure.WRONG_TYPE, "label"),
        ("ctr", payload(CTR, c1=1234), DecodeFailure.WRONG_TYPE, "c1"),
        ("ctr", payload(CTR, label=2), DecodeFailure.OUT_OF_RANGE, "label"),
        ("ctr", payload(CTR, i1=10**40), DecodeFailure.OUT_OF_RANGE, "i1"),
        ("ctr", payload(CTR, i2=-(10**10)), DecodeFailure.OUT_OF_RANGE, "i2"),
        ("ctr", payload(CTR, c5="ABCDEF12"), DecodeFailure.INVALID_VALUE, "c5"),
        ("ctr", payload(CTR, c5="abc"), DecodeFailure.INVALID_VALUE, "c5"),
        ("transaction", payload(TX, amount=-0.01), DecodeFailure.OUT_OF_RANGE, "amount"),
        ("transaction", payload(TX, amount=1e9), DecodeFailure.OUT_OF_RANGE, "amount"),
        (
            "transaction",
            payload(TX).replace(b"57.16", b"1e999"),
            DecodeFailure.OUT_OF_RANGE,
            "amount",
        ),
        (
            "transaction",
            payload(TX).replace(b"57.16", b"NaN"),
            DecodeFailure.OUT_OF_RANGE,
            "amount",
        ),
        ("transaction", payload(TX, customer_id=2**63), DecodeFailure.OUT_OF_RANGE, "customer_id"),
        ("transaction", payload(TX, terminal_id=-1), DecodeFailure.OUT_OF_RANGE, "terminal_id"),
        ("transaction", payload(TX, amount="5"), DecodeFailure.WRONG_TYPE, "amount"),
        ("transaction", payload(TX, timestamp=1522540831), DecodeFailure.WRONG_TYPE, "timestamp"),
        (
            "transaction",
            payload(TX, timestamp="2018-04-01T00:00:31"),
            DecodeFailure.INVALID_VALUE,
            "timestamp",
        ),
        (
            "transaction",
            payload(TX, timestamp="yesterday"),
            DecodeFailure.INVALID_VALUE,
            "timestamp",
        ),
        ("transaction", payload(TX, label=_DELETE), DecodeFailure.MISSING_FIELD, "label"),
        (
            "transaction",
            payload(TX, fraud_scenario=1),
            DecodeFailure.UNKNOWN_FIELD,
            "fraud_scenario",
        ),
    ],
)
def test_malformed_messages_name_what_is_wrong(
    kind: str, message: bytes, failure: DecodeFailure, field: str | None
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(kind, message)
    err = caught.value
    assert isinstance(err, PipelineError)
    assert err.failure is failure
    assert err.field == field
    text = str(err)
    assert text.startswith(f"{kind}: ")
    if field is not None:
        assert repr(field) in text
    words = {
        DecodeFailure.EMPTY_PAYLOAD: "empty payload",
        DecodeFailure.BAD_JSON: "bad JSON",
        DecodeFailure.MISSING_FIELD: "missing field",
        DecodeFailure.UNKNOWN_FIELD: "unknown field",
        DecodeFailure.WRONG_TYPE: "wrong type",
        DecodeFailure.OUT_OF_RANGE: "out of range",
        DecodeFailure.INVALID_VALUE: "invalid value",
    }
    assert words[failure] in text


def test_unknown_kind() -> None:
    with pytest.raises(UnknownEventKindError, match=r"'clicks'.*'ctr', 'transaction'"):
        decode("clicks", b"{}")
    assert set(EVENT_KINDS) == {"ctr", "transaction"}
    assert event_model("ctr") is CtrEvent


def test_from_criteo_line() -> None:
    cols = ["0", "1", "", "-1"] + ["7"] * 10 + ["68fd1e64"] + [""] * 24 + ["9727dd16"]
    event = CtrEvent.from_criteo_line("\t".join(cols) + "\r\n")
    assert event.label == 0 and event.i2 is None and event.i3 == -1 and event.i13 == 7
    assert event.c1 == "68fd1e64" and event.c2 is None and event.c26 == "9727dd16"
    with pytest.raises(DecodeError, match="40 tab-separated columns, got 3"):
        CtrEvent.from_criteo_line("1\t2\t3")
    with pytest.raises(DecodeError, match="'i2'") as caught:
        CtrEvent.from_criteo_line("\t".join(["1", "1", "x"] + [""] * 37))
    assert caught.value.failure is DecodeFailure.WRONG_TYPE
    with pytest.raises(DecodeError, match="'c1'"):
        CtrEvent.from_criteo_line("\t".join(["1"] + [""] * 13 + ["XYZ"] + [""] * 25))


def test_from_fraud_csv_row() -> None:
    row = {
        "TRANSACTION_ID": "5",
        "TX_DATETIME": "2018-04-01 00:00:31",
        "CUSTOMER_ID": "596",
        "TERMINAL_ID": "3156",
        "TX_AMOUNT": "57.16",
        "TX_TIME_SECONDS": "31",
        "TX_TIME_DAYS": "0",
        "TX_FRAUD": "1",
        "TX_FRAUD_SCENARIO": "2",
    }
    event = TransactionEvent.from_fraud_csv_row(row)
    assert event.timestamp == datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC)  # naive = UTC
    assert (event.transaction_id, event.customer_id, event.label) == (5, 596, 1)
    aware = TransactionEvent.from_fraud_csv_row(row | {"TX_DATETIME": "2018-04-01T02:00:31+02:00"})
    assert aware.timestamp == event.timestamp and aware.timestamp.tzinfo == UTC
    with pytest.raises(DecodeError, match="missing column 'TX_FRAUD'"):
        TransactionEvent.from_fraud_csv_row({k: v for k, v in row.items() if k != "TX_FRAUD"})
    with pytest.raises(DecodeError, match="TX_AMOUNT"):
        TransactionEvent.from_fraud_csv_row(row | {"TX_AMOUNT": "lots"})
    with pytest.raises(DecodeError, match="out of range for 'amount'"):
        TransactionEvent.from_fraud_csv_row(row | {"TX_AMOUNT": "-3"})


def test_from_record_is_the_json_path() -> None:
    when = datetime(2018, 4, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    event = TransactionEvent.from_record(TX | {"timestamp": when})
    assert event.timestamp == when
    with pytest.raises(DecodeError, match="wrong type for 'customer_id'"):
        TransactionEvent.from_record(TX | {"customer_id": "596"})  # no coercion at the edge
    with pytest.raises(DecodeError, match="not JSON-serialisable"):
        TransactionEvent.from_record(TX | {"amount": object()})


categories = st.none() | st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)
counts = st.none() | st.integers(min_value=-(10**9), max_value=10**12)
ctr_records = st.fixed_dictionaries(
    {"label": st.integers(0, 1)}
    | {f"i{k}": counts for k in range(1, 14)}
    | {f"c{k}": categories for k in range(1, 27)}
)
tx_records = st.fixed_dictionaries(
    {
        "transaction_id": st.integers(0, 2**63 - 1),
        "timestamp": st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        "customer_id": st.integers(0, 2**63 - 1),
        "terminal_id": st.integers(0, 2**63 - 1),
        "amount": st.floats(min_value=0, max_value=1e9, exclude_max=True),
        "label": st.integers(0, 1),
    }
)


@settings(max_examples=60, deadline=None)
@given(record=ctr_records)
def test_ctr_round_trip(record: dict[str, Any]) -> None:
    event = decode("ctr", json.dumps(record).encode())
    assert to_record(event) == record
    assert decode("ctr", encode(event)) == event


@settings(max_examples=60, deadline=None)
@given(record=tx_records)
def test_transaction_round_trip(record: dict[str, Any]) -> None:
    event = decode("transaction", json.dumps(record).encode())
    assert decode("transaction", encode(event)) == event
    assert event.timestamp.tzinfo is not None


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_garbage_only_ever_raises_decode_error(data: bytes) -> None:
    for kind in EVENT_KINDS:
        try:
            decode(kind, data)
        except DecodeError as err:
            assert str(err).startswith(kind)
