"""Time since the previous event and distinct counts: equal to a per-event reference, past only.

The reference walks the events one by one in Python; the vectorised state must give the same
values however the stream is cut into batches, and after a checkpoint round trip.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.features.entity_state import DistinctCount, SincePrevious
from pipeline.features.featurizer import Featurizer
from pipeline.features.spec import DenseSpec, EntityStateSpec, FeatureSpec

STREAMS = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(0, 50)), min_size=1, max_size=60
)
CUTS = st.lists(st.integers(1, 60), min_size=1, max_size=8)


def reference(stream: list[tuple[int, int, int]]) -> tuple[list[float], list[float]]:
    last: dict[int, float] = {}
    seen: dict[int, set[int]] = {}
    since, distinct = [], []
    t = 0.0
    for key, value, step in stream:
        t += step
        since.append(t - last[key] if key in last else float("nan"))
        distinct.append(float(len(seen.get(key, ()))))
        last[key] = t
        seen.setdefault(key, set()).add(value)
    return since, distinct


def batches(n: int, cuts: list[int]) -> list[slice]:
    out, start = [], 0
    for c in cuts * (n // max(1, min(cuts)) + 1):
        if start >= n:
            break
        out.append(slice(start, min(n, start + c)))
        start += c
    return out


@settings(max_examples=200, deadline=None)
@given(stream=STREAMS, cuts=CUTS, checkpoint_at=st.integers(0, 8))
def test_equal_to_the_per_event_reference_in_any_batching(
    stream: list[tuple[int, int, int]], cuts: list[int], checkpoint_at: int
) -> None:
    keys = np.array([k for k, _, _ in stream], dtype=np.int64)
    values = np.array([v for _, v, _ in stream], dtype=np.int64)
    times = np.cumsum([s for _, _, s in stream]).astype(np.float64)
    since, distinct = SincePrevious(), DistinctCount()
    got_since, got_distinct = [], []
    for i, part in enumerate(batches(len(stream), cuts)):
        if i == checkpoint_at:  # restore into fresh objects mid-stream
            s2, d2 = SincePrevious(), DistinctCount()
            s2.load_state_dict(since.state_dict())
            d2.load_state_dict(distinct.state_dict())
            since, distinct = s2, d2
        got_since += since.query(keys[part], times[part]).tolist()
        got_distinct += distinct.query(keys[part], values[part]).tolist()
        since.update(keys[part], times[part])
        distinct.update(keys[part], values[part])
    want_since, want_distinct = reference(stream)
    np.testing.assert_array_equal(got_since, want_since)
    assert got_distinct == want_distinct


def test_featurizer_columns_from_yaml_names() -> None:
    spec = FeatureSpec(
        label="label",
        time_field="ts",
        entity_states=(
            EntityStateSpec("gap", "since_previous", ("user",), key_type="str"),
            EntityStateSpec("sites", "distinct", ("user",), "site", key_type="str"),
        ),
        dense=(
            DenseSpec("gap_s", aggregate="gap", fill=-1.0),
            DenseSpec("n_sites", aggregate="sites"),
        ),
    )
    events = [
        {"label": 0, "ts": 10, "user": "a", "site": "x"},
        {"label": 1, "ts": 30, "user": "a", "site": "y"},
        {"label": 0, "ts": 35, "user": "b", "site": None},
        {"label": 0, "ts": 90, "user": "a", "site": "x"},
    ]
    batch = Featurizer(spec).transform(events)
    assert batch.dense[:, 0].tolist() == [-1.0, 20.0, -1.0, 60.0]
    assert batch.dense[:, 1].tolist() == [0.0, 1.0, 0.0, 2.0]  # a missing site is not a value
