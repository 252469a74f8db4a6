"""Feature spec, hashing, streaming aggregates and running standardisation."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from configs.features import FeaturesConfig, ModelConfig, load_feature_spec, load_model_spec
from pipeline.features.aggregates import WindowedAggregate
from pipeline.features.errors import FeatureSpecError, FeatureValueError
from pipeline.features.featurizer import (
    AggregateSpec,
    BucketizeSpec,
    CategoricalSpec,
    CrossSpec,
    DenseSpec,
    FeatureSpec,
    Featurizer,
    JaggedIds,
    MultiHotSpec,
    TimePartSpec,
    bucket_of,
    epoch_seconds,
    time_part,
)
from pipeline.features.hashing import base_values, blake2b64, cross_ids, hash_column, splitmix64

REPO = Path(__file__).resolve().parents[4]
DAY = 86400.0
T0 = datetime(2018, 4, 1, tzinfo=UTC)  # a Sunday


def iso(days: float) -> str:
    return (T0 + timedelta(days=days)).isoformat()


# -- hashing -------------------------------------------------------------------------------


def test_hash_is_deterministic_and_pinned() -> None:
    a = hash_column(["68fd1e64", "80e26c9b", None], "str", salt="c1")
    b = hash_column(["68fd1e64", "80e26c9b", None], "str", salt="c1")
    assert a.dtype == np.int64
    assert a.tolist() == b.tolist()
    # pinned values: a change of the hash function would silently remap every stored row
    base = blake2b64("68fd1e64")
    salt = blake2b64("freshet/salt/c1")
    expected = splitmix64(np.array([base ^ salt], dtype=np.uint64)).view(np.int64)[0]
    assert a[0] == expected
    assert splitmix64(np.array([0], dtype=np.uint64))[0] == np.uint64(0xE220A8397B1DCDAF)


def test_hash_does_not_depend_on_python_hash_seed() -> None:
    code = (
        "from pipeline.features.hashing import hash_column;"
        "print(hash_column(['68fd1e64', 'x'], 'str', 'c1').tolist(),"
        " hash_column([5, 7], 'int', 'customer').tolist())"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outs.add(res.stdout)
    here = (
        f"{hash_column(['68fd1e64', 'x'], 'str', 'c1').tolist()} "
        f"{hash_column([5, 7], 'int', 'customer').tolist()}\n"
    )
    assert outs == {here}


def test_salt_separates_features_and_missing_has_its_own_id() -> None:
    c1 = hash_column(["a", "b", None, "a"], "str", salt="c1")
    c2 = hash_column(["a", "b", None, "a"], "str", salt="c2")
    assert c1[0] == c1[3]
    assert len({int(x) for x in c1[:3]}) == 3
    assert not set(c1.tolist()) & set(c2.tolist())
    cust = hash_column([5, 6], "int", salt="customer")
    term = hash_column([5, 6], "int", salt="terminal")
    assert not set(cust.tolist()) & set(term.tolist())


def test_int_values_hash_the_same_whatever_their_python_type() -> None:
    assert (
        hash_column([5, "5", np.int64(5)], "int", "f").tolist()
        == [hash_column([5], "int", "f")[0]] * 3
    )
    _, missing = base_values([1, None, 3], "int")
    assert missing.tolist() == [False, True, False]
    with pytest.raises(FeatureValueError, match="'f'"):
        base_values(["x"], "int", "f")


def test_cross_depends_on_order_and_every_component() -> None:
    a = np.array([1, 1, 2], dtype=np.int64)
    b = np.array([7, 8, 7], dtype=np.int64)
    x = cross_ids([a, b], "x")
    assert len(set(x.tolist())) == 3
    assert not (cross_ids([b, a], "x") == x).any()
    assert not (cross_ids([a, b], "y") == x).any()


# -- sparse features -----------------------------------------------------------------------


def test_time_parts_in_utc() -> None:
    secs = epoch_seconds([iso(0), iso(0.5), "2018-04-02T01:30:00+02:00"])
    assert time_part(secs, "day_of_week").tolist() == [6, 6, 6]  # 2018-04-01 is a Sunday
    assert time_part(secs, "hour_of_day").tolist() == [0, 12, 23]
    assert time_part(secs, "hour_of_day", width=6).tolist() == [0, 2, 3]
    assert time_part(secs, "hour_of_week").tolist() == [144, 156, 167]


def test_timestamps_must_be_aware() -> None:
    aware = epoch_seconds([T0, T0 + timedelta(hours=1)])
    assert aware.tolist() == [T0.timestamp(), T0.timestamp() + 3600]
    with pytest.raises(FeatureValueError, match="naive"):
        epoch_seconds([datetime(2018, 4, 1)])  # noqa: DTZ001
    with pytest.raises(FeatureValueError, match="missing"):
        epoch_seconds([None])


def test_bucketize_by_boundaries_and_log_steps() -> None:
    by_edges = BucketizeSpec("b", "t", "x", boundaries=(10.0, 100.0))
    assert bucket_of(np.array([5.0, 10.0, 99.0, 220.0]), by_edges).tolist() == [0, 1, 1, 2]
    by_log = BucketizeSpec("b", "t", "x", log_step=1.0)
    got = bucket_of(np.array([0.0, np.e - 1.0001, np.e - 1 + 1e-3, np.nan]), by_log)
    assert got[:3].tolist() == [0, 0, 1]
    assert got[3] == -(1 << 62)


def test_featurizer_grids_jagged_and_crosses() -> None:
    spec = FeatureSpec(
        sparse=(
            CategoricalSpec("customer", "tx", "customer_id", "int"),
            CategoricalSpec("terminal", "tx", "terminal_id", "int"),
            CrossSpec("pair", "tx", ("customer", "terminal")),
            MultiHotSpec("tags", "tags", "tags", max_len=2),
        ),
    )
    events = [
        {"customer_id": 1, "terminal_id": 2, "tags": ["a", "b", "c"], "label": 1},
        {"customer_id": 1, "terminal_id": 3, "tags": None, "label": 0},
        {"customer_id": 4, "terminal_id": 2, "tags": ["a"], "label": 0},
    ]
    batch = Featurizer(spec).transform(events)
    grid = batch.sparse["tx"]
    assert isinstance(grid, np.ndarray)
    assert grid.shape == (3, 3) and grid.dtype == np.int64
    assert grid[0, 0] == grid[1, 0] and grid[0, 1] == grid[2, 1]
    assert len(set(grid[:, 2].tolist())) == 3
    tags = batch.sparse["tags"]
    assert isinstance(tags, JaggedIds)
    assert tags.offsets.tolist() == [0, 2, 2] and tags.lengths.tolist() == [2, 0, 1]
    assert tags.values[0] == tags.values[2]
    assert batch.labels.dtype == np.float32 and batch.labels.tolist() == [1.0, 0.0, 0.0]
    assert batch.sparse_names["tx"] == ("customer", "terminal", "pair")


def test_objects_with_attributes_and_datetimes_give_the_same_batch_as_dicts() -> None:
    spec = load_feature_spec(REPO / "configs" / "fraud.yaml")
    dicts = [
        {
            "transaction_id": i,
            "timestamp": iso(i / 3),
            "customer_id": i % 2,
            "terminal_id": i % 3,
            "amount": 10.0 + i,
            "label": i % 2,
        }
        for i in range(8)
    ]
    objects = [
        SimpleNamespace(**{**d, "timestamp": T0 + timedelta(days=i / 3)})
        for i, d in enumerate(dicts)
    ]
    a = Featurizer(spec).transform(dicts)
    b = Featurizer(spec).transform(objects)
    np.testing.assert_array_equal(a.dense, b.dense)
    for t in a.sparse:
        np.testing.assert_array_equal(a.sparse[t], b.sparse[t])


# -- running standardisation ---------------------------------------------------------------


def test_running_standardisation_numbers() -> None:
    spec = FeatureSpec(
        dense=(
            DenseSpec("x", field="x", standardize=True),
            DenseSpec("raw", field="x"),
            DenseSpec("logx", field="x", log1p=True, fill=-1.0, clip=(0.0, 1.2)),
        )
    )
    f = Featurizer(spec)
    first = f.transform([{"x": 1.0, "label": 0}, {"x": 2.0, "label": 0}, {"x": 3.0, "label": 1}])
    np.testing.assert_allclose(first.dense[:, 0], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    np.testing.assert_allclose(first.dense[:, 1], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(first.dense[:, 2], [np.log(2.0), np.log(3.0), 1.2], rtol=1e-6)
    second = f.transform([{"x": 4.0, "label": 0}, {"x": 5.0, "label": 0}])
    # moments of 1..5: mean 3, population variance 2
    assert f.moments.count == 5
    np.testing.assert_allclose(f.moments.mean, [3.0])
    np.testing.assert_allclose(f.moments.variance, [2.0])
    np.testing.assert_allclose(second.dense[:, 0], [1 / np.sqrt(2), 2 / np.sqrt(2)], rtol=1e-6)
    # serving: no update
    peek = f.transform([{"x": 100.0, "label": None}], update=False)
    assert f.moments.count == 5
    assert np.isnan(peek.labels[0])
    np.testing.assert_allclose(peek.dense[0, 0], 97 / np.sqrt(2), rtol=1e-6)
    missing = f.transform([{"x": None, "label": 0}], update=False)
    assert missing.dense[0, 2] == 0.0  # fill -1 -> log1p(max(-1, 0)) = 0


# -- streaming aggregates ------------------------------------------------------------------


def _fraud_like_spec(delay: int = 1) -> FeatureSpec:
    return FeatureSpec(
        label="label",
        time_field="timestamp",
        aggregates=(
            AggregateSpec("cust_2d", ("customer_id",), "amount", window=2),
            AggregateSpec("term_risk", ("terminal_id",), "label", window=3, delay=delay),
        ),
        dense=(
            DenseSpec("n", aggregate="cust_2d", stat="count"),
            DenseSpec("mean", aggregate="cust_2d", stat="mean", fill=-1.0),
            DenseSpec("z", aggregate="cust_2d", stat="zscore", fill=99.0),
            DenseSpec("ratio", aggregate="cust_2d", stat="log_ratio"),
            DenseSpec("frauds", aggregate="term_risk", stat="sum"),
            DenseSpec("rate", aggregate="term_risk", stat="rate", fill=-1.0),
        ),
    )


STREAM: list[dict[str, Any]] = [
    # day 0
    {"timestamp": iso(0.1), "customer_id": 1, "terminal_id": 9, "amount": 10.0, "label": 1},
    {"timestamp": iso(0.2), "customer_id": 1, "terminal_id": 9, "amount": 30.0, "label": 0},
    {"timestamp": iso(0.3), "customer_id": 2, "terminal_id": 9, "amount": 99.0, "label": 1},
    # day 1
    {"timestamp": iso(1.5), "customer_id": 1, "terminal_id": 9, "amount": 50.0, "label": 1},
    # day 3: customer window [2, 3] holds nothing; terminal labels of days 0..2 visible
    {"timestamp": iso(3.5), "customer_id": 1, "terminal_id": 9, "amount": 20.0, "label": 0},
]


def test_aggregate_values_on_a_small_stream() -> None:
    batch = Featurizer(_fraud_like_spec()).transform(STREAM)
    d = {name: batch.dense[:, j].tolist() for j, name in enumerate(batch.dense_names)}
    assert d["n"] == [0, 1, 0, 2, 0]
    assert d["mean"] == [-1, 10, -1, 20, -1]
    assert d["z"][:3] == [99, 99, 99]
    assert d["z"][3] == pytest.approx((50 - 20) / 10)
    assert d["ratio"][1] == pytest.approx(np.log(31) - np.log(11), rel=1e-6)
    # labels: same-day labels are not visible with delay 1; day-0 labels are visible on day 1
    assert d["frauds"] == [0, 0, 0, 2, 3]
    assert d["rate"] == [-1, -1, -1, pytest.approx(2 / 3), pytest.approx(3 / 4)]


@pytest.mark.parametrize("split", [1, 2, 3, 5])
def test_aggregates_never_read_own_or_future_values(split: int) -> None:
    """Changing an event's own (or any later) amount and label leaves its features alone."""
    spec = _fraud_like_spec()
    base = Featurizer(spec)
    ref = np.concatenate(
        [base.transform(STREAM[i : i + split]).dense for i in range(0, len(STREAM), split)]
    )
    for i in range(len(STREAM)):
        changed = [dict(e) for e in STREAM]
        for j in range(i, len(changed)):
            changed[j]["amount"] = 1e6
            changed[j]["label"] = 1 - changed[j]["label"]
        f = Featurizer(spec)
        got = np.concatenate(
            [f.transform(changed[k : k + split]).dense for k in range(0, len(changed), split)]
        )
        cols = [j for j, n in enumerate(spec.dense_names) if n not in ("z", "ratio")]
        np.testing.assert_array_equal(got[i][cols], ref[i][cols])


def test_label_aggregates_need_a_delay() -> None:
    with pytest.raises(FeatureSpecError, match="delay"):
        _fraud_like_spec(delay=0)


def _brute_force(
    keys: list[int], buckets: list[int], values: list[float], window: int, delay: int
) -> list[tuple[float, float]]:
    out = []
    for i in range(len(keys)):
        hi = buckets[i] - delay
        lo = hi - window + 1
        seen = [values[j] for j in range(i) if keys[j] == keys[i] and lo <= buckets[j] <= hi]
        out.append((float(len(seen)), float(sum(seen))))
    return out


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(-5, 5)),
        min_size=1,
        max_size=40,
    ),
    window=st.integers(1, 4),
    delay=st.integers(0, 3),
    cuts=st.lists(st.integers(1, 40), max_size=6),
)
def test_windowed_aggregate_matches_brute_force_for_any_batching(
    events: list[tuple[int, int, int]], window: int, delay: int, cuts: list[int]
) -> None:
    keys = [k for k, _, _ in events]
    buckets = np.cumsum([g for _, g, _ in events]).tolist()
    values = [float(v) for _, _, v in events]
    expected = _brute_force(keys, buckets, values, window, delay)
    agg = WindowedAggregate(window, delay, capacity=2)
    bounds = sorted({0, len(events), *[c for c in cuts if c < len(events)]})
    got: list[tuple[float, float]] = []
    for a, b in itertools.pairwise(bounds):
        k = np.array(keys[a:b], dtype=np.int64)
        bk = np.array(buckets[a:b], dtype=np.int64)
        v = np.array(values[a:b], dtype=np.float64)
        stats = agg.query(k, bk, v)
        agg.update(k, bk, v)
        got += list(zip(stats.count.tolist(), stats.total.tolist(), strict=True))
    assert got == expected


def test_sparse_ids_and_peeks_leave_state_alone_and_state_round_trips() -> None:
    spec = load_feature_spec(REPO / "configs" / "fraud.yaml")
    rng = np.random.default_rng(0)
    events = [
        {
            "transaction_id": i,
            "timestamp": iso(i / 40),
            "customer_id": int(rng.integers(5)),
            "terminal_id": int(rng.integers(7)),
            "amount": float(rng.gamma(2, 20)),
            "label": int(rng.random() < 0.2),
        }
        for i in range(400)
    ]
    straight = Featurizer(spec)
    ref = [straight.transform(events[i : i + 50]).dense for i in range(0, 400, 50)]

    f = Featurizer(spec)
    out = [f.transform(events[i : i + 50]).dense for i in range(0, 200, 50)]
    ids = f.sparse_ids(events[200:300])
    assert set(ids) == {"tx"} and ids["tx"].dtype == np.int64
    assert (np.diff(ids["tx"]) > 0).all()
    f.transform(events[200:300], update=False)
    restored = Featurizer(spec)
    restored.load_state_dict(f.state_dict())
    out += [restored.transform(events[i : i + 50]).dense for i in range(200, 400, 50)]
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert restored.events_seen == 400


# -- the YAML spec -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fraud.yaml", "ctr.yaml"])
def test_shipped_configs_load(name: str) -> None:
    spec = load_feature_spec(REPO / "configs" / name)
    assert spec.tables
    assert load_model_spec(REPO / "configs" / name).kind == "deepfm"
    assert load_model_spec(REPO / "configs" / name, "baseline").kind == "logistic"


def test_fraud_config_never_reads_the_scenario_and_delays_label_aggregates() -> None:
    spec = load_feature_spec(REPO / "configs" / "fraud.yaml")
    fields = {getattr(s, "field", None) for s in spec.sparse}
    fields |= {d.field for d in spec.dense}
    fields |= {k for a in spec.aggregates for k in (*a.key, a.value)}
    fields.discard(None)
    assert fields == {"customer_id", "terminal_id", "amount", "label"}
    for agg in spec.aggregates:
        if agg.value == spec.label:
            assert agg.delay >= 1


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (
            {
                "sparse": [
                    {"type": "categorical", "name": "a", "table": "t", "field": "a", "extra": 1}
                ]
            },
            "Extra inputs",
        ),
        ({"sparse": [{"type": "nope", "name": "a", "table": "t", "field": "a"}]}, "tag"),
        (
            {"time_field": "ts", "aggregates": [{"name": "a", "key": ["k"], "window": 0}]},
            "greater than or equal",
        ),
        (
            {"sparse": [{"type": "cross", "name": "x", "table": "t", "of": ["a", "b"]}]},
            "not a single-valued",
        ),
        (
            {
                "sparse": [
                    {
                        "type": "bucketize",
                        "name": "b",
                        "table": "t",
                        "field": "x",
                        "boundaries": [2.0, 1.0],
                    }
                ]
            },
            "increasing",
        ),
        (
            {
                "sparse": [
                    {"type": "multi_hot", "name": "m", "table": "t", "field": "m"},
                    {"type": "categorical", "name": "c", "table": "t", "field": "c"},
                ]
            },
            "jagged",
        ),
        ({"aggregates": [{"name": "a", "key": ["k"]}]}, "no time field"),
        (
            {"time_field": "ts", "aggregates": [{"name": "a", "key": ["k"], "value": "label"}]},
            "delay",
        ),
        ({"dense": [{"name": "d"}]}, "exactly one"),
        ({"dense": [{"name": "d", "field": "x", "clip": [1.0, 0.0]}]}, "low < high"),
    ],
)
def test_invalid_specs_are_refused(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        FeaturesConfig.model_validate(raw)


def test_model_config_bounds() -> None:
    with pytest.raises(ValidationError):
        ModelConfig.model_validate({"type": "deepfm", "embedding_dim": 0})
    with pytest.raises(ValidationError):
        ModelConfig.model_validate({"type": "svm"})
    spec = ModelConfig.model_validate(
        {"type": "logistic", "linear_optimizer": {"kind": "ftrl", "lr": 0.5, "l2": 1.0}}
    ).to_spec()
    assert spec.linear_optimizer.kind == "ftrl" and spec.linear_optimizer.l2 == 1.0


def test_time_part_spec_needs_a_time_field() -> None:
    with pytest.raises(FeatureSpecError, match="time field"):
        FeatureSpec(sparse=(TimePartSpec("h", "t", "hour_of_day"),))
