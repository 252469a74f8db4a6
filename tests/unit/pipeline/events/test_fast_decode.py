"""FastDecoder gives exactly the verdicts and values of the pydantic models, faster.

The fast path may only accept; so the contract is: for every payload, the same event (field
by field, timestamps with the same instant and UTC offset) or the same ``DecodeError``
(message and reason code). Checked on the fuzzing corpus (valid payloads redrawn inside the
schema, malformed ones spoilt every known way) and on near-misses aimed at the fast path's
own checks: patterns, timestamps, integer bounds, floats.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.errors import DecodeError
from pipeline.events import fast_decode
from pipeline.events.fast_decode import FastDecoder
from pipeline.events.generators import generate
from pipeline.events.kinds import EVENT_KINDS, decode
from tests.integration.fuzz_payloads import malformed_payloads, valid_payloads

KINDS = sorted(EVENT_KINDS)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def verdict(fn: Any, payload: bytes) -> tuple[Any, ...]:
    """``("ok", fields...)`` or ``("error", failure, message)``."""
    try:
        event = fn(payload)
    except DecodeError as err:
        return ("error", err.failure, str(err), err.field)
    kind = "transaction" if hasattr(event, "transaction_id") else "ctr"
    out: list[Any] = ["ok"]
    for name in EVENT_KINDS[kind].model_fields:
        value = getattr(event, name)
        out.append((type(value).__name__, value))
        if name == "timestamp":
            out.append(value.utcoffset())
    return tuple(out)


def same_verdict(kind: str, payload: bytes, dec: FastDecoder | None = None) -> None:
    dec = dec or FastDecoder(kind)
    expected = verdict(lambda p: decode(kind, p), payload)
    got = verdict(dec, payload)
    assert got == expected, payload[:300]


@pytest.mark.parametrize("kind", KINDS)
def test_generated_streams_take_the_fast_path_with_equal_values(kind: str) -> None:
    dec = FastDecoder(kind)
    payloads = [json.dumps(r, default=str).encode() for r in generate(kind, 2_000, seed=3)]
    for payload in payloads:
        same_verdict(kind, payload, dec)
    assert (dec.fast, dec.slow) == (2_000, 0)
    assert isinstance(dec(payloads[0]), msgspec.Struct)


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_valid_payloads_same_as_the_model(kind: str, data: st.DataObject) -> None:
    same_verdict(kind, data.draw(valid_payloads(kind)).data)


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_malformed_payloads_same_reason_as_the_model(kind: str, data: st.DataObject) -> None:
    dec = FastDecoder(kind)
    same_verdict(kind, data.draw(malformed_payloads(kind)).data, dec)
    assert dec.fast == 0  # nothing malformed is accepted by the fast path


TIMESTAMPS = st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt _][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{0,9})?)?"
    r"([Zz]|[+-][0-9]{2}:?[0-9]{2})?\Z"
) | st.text(max_size=30)
CATEGORIES = (
    st.from_regex(r"\A[0-9a-fA-F]{7,9}\n?\Z")
    | st.text(alphabet="0123456789abcdef\n\u0660", max_size=10)
    | st.none()
)
NUMBERS = st.one_of(
    st.integers(-(2**64), 2**64),
    st.sampled_from([2**63 - 1, 2**63, -(10**9), -(10**9) - 1, 10**12, 10**12 + 1, 0, 1, 2]),
    st.floats(allow_nan=False) | st.sampled_from(["1e400", "-0.0", "1E2", "0.5"]),
    st.booleans(),
)


def spoil(record: dict[str, Any], field: str, value: Any) -> bytes:
    text = json.dumps(record, default=str)
    literal = value if isinstance(value, str) and value[:1].isdigit() else json.dumps(value)
    if isinstance(value, str) and value in ("1e400", "-0.0", "1E2", "0.5"):
        literal = value
    return text.replace(
        json.dumps(field) + ": " + json.dumps(record[field], default=str),
        json.dumps(field) + ": " + literal,
        1,
    ).encode()


@SETTINGS
@given(stamp=TIMESTAMPS, amount=NUMBERS, customer=NUMBERS, seed=st.integers(0, 50))
def test_transaction_near_misses(stamp: str, amount: Any, customer: Any, seed: int) -> None:
    record = next(iter(generate("transaction", 1, seed=seed)))
    record = {**record, "timestamp": str(record["timestamp"])}
    for field, value in (("timestamp", stamp), ("amount", amount), ("customer_id", customer)):
        payload = (
            spoil(record, field, value)
            if field != "timestamp"
            else (json.dumps({**record, "timestamp": value}).encode())
        )
        same_verdict("transaction", payload)


@SETTINGS
@given(cats=st.lists(CATEGORIES, min_size=1, max_size=4), count=NUMBERS, seed=st.integers(0, 50))
def test_ctr_near_misses(cats: list[str | None], count: Any, seed: int) -> None:
    record = next(iter(generate("ctr", 1, seed=seed)))
    dec = FastDecoder("ctr")
    for i, cat in enumerate(cats, start=1):
        same_verdict("ctr", json.dumps({**record, f"c{i}": cat}).encode(), dec)
        same_verdict("ctr", json.dumps({**record, f"c{i}": cat}).encode(), dec)  # cached now
    same_verdict("ctr", spoil(record, "i1", count), dec)


def test_a_value_refused_once_is_refused_again() -> None:
    record = next(iter(generate("ctr", 1, seed=0)))
    dec = FastDecoder("ctr")
    bad = json.dumps({**record, "c1": "68fd1e6\n"}).encode()
    for _ in range(2):
        with pytest.raises(DecodeError, match="c1"):
            dec(bad)
    assert dec._checks[0]._joined is not None  # ^[0-9a-f]{8}$: one regex call per event


def test_the_cache_of_other_patterns_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    check = fast_decode._PatternCheck(r"^(?:ab|cd)+$", ["a", "b"])
    assert check._joined is None  # not one character class: values are remembered
    monkeypatch.setattr(fast_decode, "PATTERN_CACHE_LIMIT", 10)
    for i in range(50):
        assert check(SimpleNamespace(a="ab" * (i + 1), b=None))
    assert not check(SimpleNamespace(a="abc", b="ab"))
    assert not check(SimpleNamespace(a="ab", b="ab\n"))
    assert len(check._good) <= 12  # None + the limit + the value that tipped it


PIECES = st.sampled_from(
    ["", "0", "7f", "deadbeef", "DEADBEEF", "g", "\x00", "\n", "é", "a\x00b", "0000000", "x"]
)
VALUES = st.one_of(st.none(), st.lists(PIECES, max_size=4).map("".join))
CLASS_PATTERNS = {  # pattern: how it is checked
    "^[0-9a-f]{8}$": "translate",
    "^[0-9a-f]{2,8}$": "translate",
    "^[a-f]+$": "translate",
    "^[0-9]*$": "translate",
    "^[0-9]?$": "translate",
    "^[b-z]$": "translate",
    "^[a-fé]{1,4}$": "regex",  # not ASCII: one regex call on the joined values
    "^[^x]{1,3}$": "cache",  # its class holds NUL: values are remembered instead
}


@SETTINGS
@given(
    pattern=st.sampled_from(sorted(CLASS_PATTERNS)), values=st.lists(VALUES, min_size=1, max_size=6)
)
@example(pattern="^[0-9a-f]{8}$", values=["deadbeef\x00deadbeef"])  # one value, two pieces
@example(pattern="^[a-f]+$", values=["ab", None, "c\x00d", None])
@example(pattern="^[0-9a-f]{8}$", values=["0000000", "000000000"])  # 7 + 9 = 2 x 8
@example(pattern="^[a-fé]{1,4}$", values=["é", "a\x00b"])
def test_one_call_per_event_gives_each_values_verdict(
    pattern: str, values: list[str | None]
) -> None:
    names = [f"f{i}" for i in range(len(values))]
    check = fast_decode._PatternCheck(pattern, names)
    event = SimpleNamespace(**dict(zip(names, values, strict=True)))
    # what the model's engine says: the pattern matches the whole value (no final newline)
    want = all(v is None or ("\n" not in v and re.search(pattern, v)) for v in values)
    path = "cache" if check._joined is None else "translate" if check._delete else "regex"
    assert path == CLASS_PATTERNS[pattern]
    assert check(event) == bool(want)


def test_a_model_it_cannot_mirror_is_decoded_by_pydantic_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(kind: str, schema: Any = None) -> Any:
        raise fast_decode._Unsupported(kind)

    monkeypatch.setattr(fast_decode, "fast_struct", refuse)
    dec = FastDecoder("ctr")
    payload = json.dumps(next(iter(generate("ctr", 1, seed=0)))).encode()
    assert type(dec(payload)).__name__ == "CtrEvent"
    assert (dec.fast, dec.slow) == (0, 1)
    assert "pydantic only" in repr(dec)
