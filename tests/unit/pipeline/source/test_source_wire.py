"""Source-process frames: columns, batches and frames round-trip; the featurizer reads columns
exactly as it reads the event models."""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs.job import JobConfig
from pipeline.errors import BrokerError, ConfigError, SourceError, SourceStateError
from pipeline.events.columnar import ColumnarEvents
from pipeline.events.fast_decode import FastDecoder
from pipeline.events.generators import generate
from pipeline.events.kinds import EVENT_KINDS, CtrEvent, TransactionEvent, decode, to_record
from pipeline.features.featurizer import Featurizer, event_columns, string_category_fields
from pipeline.features.hashing import MISSING_BASE, StringHasher, base_values
from pipeline.source.kafka import Assignment, SourceBatch, SourceConfig
from pipeline.source.wire import (
    WireError,
    config_from_wire,
    config_to_wire,
    decode_batch,
    decode_column,
    encode_batch,
    encode_column,
    error_from_wire,
    error_to_wire,
    read_frame,
    write_frame,
)

REPO = Path(__file__).resolve().parents[4]


def roundtrip(values: list[Any]) -> tuple[str, list[Any]]:
    spec, chunks = encode_column("f", values, 0)
    spec = json.loads(json.dumps(spec))  # as the header travels
    return spec["enc"], decode_column(spec, b"".join(chunks), len(values))


def same(a: list[Any], b: list[Any]) -> bool:
    """Equal, NaN equal to NaN, and of the same types."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if type(x) is not type(y):
            return False
        if isinstance(x, float) and math.isnan(x):
            if not math.isnan(y):
                return False
        elif x != y:
            return False
    return True


TZ2 = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("values", "encoding"),
    [
        ([5, None, -1, 2**63 - 1, -(2**63)], "int"),
        ([2**63, 1], "json"),  # does not fit an int64: JSON carries it exactly
        ([1.5, None, float("nan"), -0.0, 1e300], "float"),
        (["68fd1e64", None, "", "é ü"], "str"),
        (["a\nb", "c"], "json"),  # a newline in a value: not the "\n"-joined text
        ([True, False, None], "json"),  # bools stay bools
        ([1, 2.5, None], "json"),  # mixed types stay mixed
        ([None, None], "null"),
        ([[1, 2], None, []], "json"),
        (
            [
                datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC),
                None,
                datetime(2018, 4, 1, tzinfo=TZ2),
            ],
            "datetime",
        ),
        ([datetime(2018, 4, 1, 0, 0, 31, 7)], "datetime"),  # noqa: DTZ001 - naive on purpose
    ],
)
def test_columns_round_trip_with_their_types(values: list[Any], encoding: str) -> None:
    enc, back = roundtrip(values)
    assert enc == encoding
    assert same(back, values)
    for got, want in zip(back, values, strict=True):
        if isinstance(want, datetime):
            assert got.utcoffset() == want.utcoffset()


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=1),
        st.lists(st.one_of(st.none(), st.floats(allow_nan=True)), min_size=1),
        st.lists(st.one_of(st.none(), st.text()), min_size=1),
        st.lists(st.one_of(st.none(), st.integers(), st.booleans(), st.text()), min_size=1),
    )
)
def test_any_json_column_round_trips(values: list[Any]) -> None:
    assert same(roundtrip(values)[1], values)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just(int), st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)))),
        st.tuples(st.just(float), st.lists(st.one_of(st.none(), st.floats(allow_nan=False)))),
        st.tuples(st.just(str), st.lists(st.one_of(st.none(), st.text()))),
    )
)
def test_a_kind_hint_gives_the_same_column(hinted: tuple[type, list[Any]]) -> None:
    kind, values = hinted
    plain = encode_column("f", tuple(values), 8)
    assert encode_column("f", tuple(values), 8, kind) == plain


def test_a_value_no_frame_can_carry_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="field 'f' cannot be sent"):
        encode_column("f", [object()], 0)


def ctr_batch(n: int = 300) -> SourceBatch:
    models = tuple(CtrEvent.from_record(e) for e in generate("ctr", n, 3))
    keys = tuple(None if i % 7 == 0 else str(i).encode() for i in range(n))
    return SourceBatch(
        seq=4,
        events=models,
        keys=keys,
        positions=tuple(("clicks" if i % 2 else "views", i % 3, 100 + i) for i in range(n)),
        timestamps_ms=tuple(1_700_000_000_000 + i for i in range(n)),
        offsets={("clicks", 0): 400, ("views", 2): 399},
        dead_letters=2,
    )


def through_a_pipe(batch: SourceBatch) -> SourceBatch:
    header, chunks = encode_batch(batch, tuple(CtrEvent.model_fields))
    pipe = io.BytesIO()
    write_frame(pipe, header, chunks)
    pipe.seek(0)
    frame = read_frame(pipe)
    assert frame is not None and read_frame(pipe) is None
    return decode_batch(*frame)


def test_a_batch_round_trips_through_a_frame() -> None:
    batch = ctr_batch()
    back = through_a_pipe(batch)
    assert back.seq == 4 and back.dead_letters == 2 and len(back) == len(batch)
    assert back.keys == batch.keys
    assert back.positions == batch.positions
    assert back.timestamps_ms == batch.timestamps_ms
    assert back.offsets == batch.offsets
    assert isinstance(back.events, ColumnarEvents)
    assert back.events.to_records() == [to_record(e) for e in batch.events]
    assert back.events[5] == to_record(batch.events[5])


@pytest.mark.parametrize("kind", ["ctr", "transaction"])
def test_fast_decoder_structs_make_the_same_frame_as_models(kind: str) -> None:
    payloads = [json.dumps(r, default=str).encode() for r in generate(kind, 300, seed=2)]
    fast = FastDecoder(kind)
    structs = tuple(fast(p) for p in payloads)
    models = tuple(decode(kind, p) for p in payloads)
    assert fast.fast == len(payloads)
    names = tuple(EVENT_KINDS[kind].model_fields)
    frames = []
    for events in (structs, models):
        batch = SourceBatch(1, events, (None,) * 300, (("t", 0, 0),) * 300, (0,) * 300, {})
        frames.append(encode_batch(batch, names))
    (h1, c1), (h2, c2) = frames
    assert h1 == h2 and b"".join(c1) == b"".join(c2)


def test_an_empty_batch_round_trips() -> None:
    empty = SourceBatch(0, (), (), (), (), {("t", 0): 9}, dead_letters=3)
    back = through_a_pipe(empty)
    assert len(back) == 0 and back.offsets == {("t", 0): 9} and back.dead_letters == 3


@pytest.mark.parametrize("kind", ["ctr", "transaction"])
def test_the_featurizer_reads_columns_as_it_reads_models(kind: str) -> None:
    config = JobConfig.from_yaml(REPO / "configs" / ("ctr.yaml" if kind == "ctr" else "fraud.yaml"))
    model = CtrEvent if kind == "ctr" else TransactionEvent
    events = [model.from_record(e) for e in generate(kind, 500, 1)]
    batch = SourceBatch(0, tuple(events), (None,) * 500, (("t", 0, 0),) * 500, (0,) * 500, {})
    header, chunks = encode_batch(batch, tuple(model.model_fields))
    columns = decode_batch(json.loads(json.dumps(header)), b"".join(chunks)).events
    spec = config.features.to_spec()
    from_models, from_columns = Featurizer(spec), Featurizer(spec)
    for half in (slice(0, 250), slice(250, 500)):  # the streaming state advances alike
        a = from_models.transform(events[half])
        b = from_columns.transform(columns[half])
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.dense, b.dense)
        assert a.sparse.keys() == b.sparse.keys()
        for table in a.sparse:
            np.testing.assert_array_equal(a.sparse[table], b.sparse[table])
        if a.timestamps is not None:
            np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert from_models.sparse_ids(events).keys() == from_columns.sparse_ids(columns).keys()


def test_event_columns_takes_columns_as_they_are() -> None:
    batch = ColumnarEvents(2, {"a": [1, 2]})
    col = event_columns(batch)
    assert col("a") == [1, 2] and col("b") == [None, None]


def test_frames_refuse_garbage_and_a_cut_stream() -> None:
    with pytest.raises(WireError, match="bad frame prefix"):
        read_frame(io.BytesIO(b"hello, world, this is not a frame"))
    pipe = io.BytesIO()
    write_frame(pipe, {"type": "status"}, [b"12345"])
    cut = io.BytesIO(pipe.getvalue()[:-2])
    with pytest.raises(WireError, match="ended inside a frame"):
        read_frame(cut)
    assert read_frame(io.BytesIO(b"")) is None


def test_config_round_trips_and_needs_json_security_options() -> None:
    config = SourceConfig(
        bootstrap_servers=("a:1", "b:2"),
        topics=("t", "u"),
        group_id=None,
        assignment=Assignment.MANUAL,
        partitions=(("t", 0), ("u", 3)),
        hash_fields=("c1", "c2"),
        fast_record_reader=False,
        client_config={"security_protocol": "SASL_SSL", "sasl_plain_password": "pw"},
    )
    back = config_from_wire(json.loads(json.dumps(config_to_wire(config))))
    assert back == config and dict(back.client_config) == dict(config.client_config)
    odd = SourceConfig(bootstrap_servers="a:1", topics=("t",), client_config={"ssl_x": object()})
    with pytest.raises(ConfigError, match="client_config"):
        config_to_wire(odd)


def test_errors_cross_with_their_type_and_message() -> None:
    again = error_from_wire(error_to_wire(ConfigError("seek", "bad position 3")))
    assert isinstance(again, ConfigError) and again.what == "seek"
    assert str(again) == "seek: bad position 3"
    assert type(error_from_wire(error_to_wire(BrokerError("gone")))) is BrokerError
    state = error_from_wire(error_to_wire(SourceStateError("commit()", "closed")))
    assert type(state) is SourceError and "commit() is not allowed" in str(state)
    other = error_from_wire(error_to_wire(KeyError("x")))
    assert type(other) is SourceError and str(other).startswith("KeyError")


@pytest.mark.parametrize("as_columns", [False, True])
def test_ids_looked_at_ahead_are_the_ids_trained(as_columns: bool) -> None:
    """sparse_ids() keeps a batch's ids for its transform(): the same as computing them anew."""
    spec = JobConfig.from_yaml(REPO / "configs" / "fraud.yaml").features.to_spec()
    records = list(generate("transaction", 600, 2))
    batches: list[Any] = []
    for i in range(0, 600, 100):
        chunk = tuple(TransactionEvent.from_record(e) for e in records[i : i + 100])
        if as_columns:
            batch = SourceBatch(0, chunk, (None,) * 100, (("t", 0, 0),) * 100, (0,) * 100, {})
            header, body = encode_batch(batch, tuple(TransactionEvent.model_fields))
            batches.append(decode_batch(json.loads(json.dumps(header)), b"".join(body)).events)
        else:
            batches.append(chunk)
    ahead, plain = Featurizer(spec), Featurizer(spec)
    for i, events in enumerate(batches):
        for later in batches[i : i + 3]:  # as TrainJob's prefetch peeks 2 batches ahead
            ahead.sparse_ids(later)
        a, b = ahead.transform(events), plain.transform(events)
        for table in b.sparse:
            np.testing.assert_array_equal(a.sparse[table], b.sparse[table])
        np.testing.assert_array_equal(a.dense, b.dense)
        assert a.timestamps is not None and b.timestamps is not None
        np.testing.assert_array_equal(a.timestamps, b.timestamps)


@settings(max_examples=200, deadline=None)
@given(
    calls=st.lists(
        st.lists(st.one_of(st.none(), st.sampled_from("abcdefgh"), st.text(max_size=4))),
        max_size=6,
    ),
    limit=st.sampled_from([1, 3, 8, 1 << 20]),
)
def test_the_string_hasher_gives_base_values_whatever_it_remembers(
    calls: list[list[str | None]], limit: int
) -> None:
    hasher = StringHasher(limit)
    for values in calls:
        want = base_values(values, "str")[0]
        got = hasher(values)
        assert got.dtype == np.uint64 and got.tolist() == want.tolist()
        assert len(hasher) <= limit


def test_the_string_hasher_takes_other_values_as_base_values_does() -> None:
    hasher = StringHasher()
    odd: list[Any] = ["1", 1, None, 2.5]
    assert hasher(odd).tolist() == base_values(odd, "str")[0].tolist()
    assert len(hasher) == 0  # nothing remembered from a column that is not all strings


def test_string_hashes_cross_for_the_hash_fields_only() -> None:
    events = [CtrEvent.from_record(e) for e in generate("ctr", 300, 3)]
    events[7] = events[7].model_copy(update={"c1": None})
    batch = SourceBatch(0, tuple(events), (None,) * 300, (("t", 0, 0),) * 300, (0,) * 300, {})
    header, chunks = encode_batch(batch, tuple(CtrEvent.model_fields), StringHasher(), {"c1"})
    columns = decode_batch(json.loads(json.dumps(header)), b"".join(chunks)).events
    assert isinstance(columns, ColumnarEvents)
    hashes = columns.string_hashes("c1")
    assert hashes is not None and hashes[7] == MISSING_BASE
    assert hashes.tolist() == base_values([e.c1 for e in events], "str")[0].tolist()
    assert columns.column("c1") == [e.c1 for e in events]  # the text still crosses
    assert columns.string_hashes("c2") is None and columns.string_hashes("i1") is None
    assert columns[10:20].string_hashes("c1").tolist() == hashes[10:20].tolist()  # type: ignore[union-attr]


def test_the_featurizer_salts_the_hashes_and_never_reads_the_text() -> None:
    spec = JobConfig.from_yaml(REPO / "configs" / "ctr.yaml").features.to_spec()
    fields = string_category_fields(spec)
    events = [CtrEvent.from_record(e) for e in generate("ctr", 400, 4)]
    batch = SourceBatch(0, tuple(events), (None,) * 400, (("t", 0, 0),) * 400, (0,) * 400, {})
    header, chunks = encode_batch(batch, tuple(CtrEvent.model_fields), StringHasher(), fields)
    decoded = decode_batch(json.loads(json.dumps(header)), b"".join(chunks)).events
    assert isinstance(decoded, ColumnarEvents)

    def unread(name: str) -> Any:
        def fail() -> list[Any]:
            raise AssertionError(f"the featurizer decoded {name}")

        return fail

    hashes = {f: decoded.string_hashes(f) for f in fields}
    text_never_read = ColumnarEvents(
        400,
        {n: unread(n) if n in fields else decoded.column(n) for n in CtrEvent.model_fields},
        {f: h for f, h in hashes.items() if h is not None},
    )
    want = Featurizer(spec).transform(events)
    got = Featurizer(spec).transform(text_never_read)
    assert want.sparse.keys() == got.sparse.keys()
    for table in want.sparse:
        np.testing.assert_array_equal(want.sparse[table], got.sparse[table])
    np.testing.assert_array_equal(want.dense, got.dense)


def test_the_string_hasher_forgets_before_it_passes_its_limit() -> None:
    hasher = StringHasher(3)
    assert hasher(["a", ""]).tolist() == base_values(["a", ""], "str")[0].tolist()
    values = ["a", "b", "c", ""]  # 2 new: past the limit, so it starts again, with all 4 new
    assert hasher(values).tolist() == base_values(values, "str")[0].tolist()
    assert len(hasher) == 0  # 4 > 3: not remembered at all
    assert hasher(["x", None, "y"]).tolist() == base_values(["x", None, "y"], "str")[0].tolist()
    assert len(hasher) == 2
