"""The hash maps behind the store's slot index and the featurizer: khash and the public fallback.

Contract: pandas' private khash tables (on the tested pandas releases) and :class:`IndexMap`
(public ``pd.Index`` API only) answer every sequence of inserts and lookups as a dict does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedding_store import hash_index
from embedding_store.hash_index import TESTED_PANDAS, IndexMap, int64_map, object_map

_batch = st.lists(st.tuples(st.integers(-50, 50), st.integers(0, 10**6)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(_batch, max_size=12), small=st.booleans())
def test_int64_maps_agree_with_a_dict(batches: list, small: bool) -> None:
    # fold_at=3: the levels fold into each other every few inserts, so merges are checked too
    maps = [int64_map(16), IndexMap(), IndexMap(fold_at=3 if small else 4096)]
    reference: dict[int, int] = {}
    probe = np.arange(-60, 61, dtype=np.int64)
    for batch in batches:
        keys = np.array([k for k, _ in batch], dtype=np.int64)
        values = np.array([v for _, v in batch], dtype=np.int64)
        for m in maps:
            m.map_keys_to_values(keys, values)
        reference.update(zip(keys.tolist(), values.tolist(), strict=True))
        want = [reference.get(k, -1) for k in probe.tolist()]
        for m in maps:
            assert np.asarray(m.lookup(probe), dtype=np.int64).tolist() == want


def test_index_map_folds_levels_and_keeps_the_newest_value() -> None:
    m = IndexMap()
    rng = np.random.default_rng(1)
    reference: dict[int, int] = {}
    for step in range(40):  # 40 x 1,000 keys: several folds into the middle and the base
        keys = rng.integers(0, 20_000, 1_000).astype(np.int64)
        values = np.arange(step * 1_000, (step + 1) * 1_000, dtype=np.int64)
        m.map_keys_to_values(keys, values)
        reference.update(zip(keys.tolist(), values.tolist(), strict=True))
    probe = np.arange(-5, 20_005, dtype=np.int64)
    assert m.lookup(probe).tolist() == [reference.get(k, -1) for k in probe.tolist()]
    assert len(m._levels[2][0]) > 4_096  # the base took folds
    assert m.sizeof() >= 16 * len(reference)


def test_object_maps_agree_with_a_dict() -> None:
    words = [f"w{i % 37}" for i in range(200)] + [None, "", "é", "w1"]
    for m in (object_map(), IndexMap(dtype="object")):
        reference: dict[object, int] = {}
        for i, w in enumerate(words):
            if w not in reference:
                m.set_item(w, i)
                reference[w] = i
        probe = np.empty(len(words) + 2, dtype=object)
        probe[:] = [*words, "absent", "w999"]
        assert np.asarray(m.lookup(probe)).tolist() == [reference.get(w, -1) for w in probe]


def test_the_installed_pandas_is_a_tested_one_and_gets_khash() -> None:
    assert ".".join(pd.__version__.split(".")[:2]) in TESTED_PANDAS
    assert hash_index.uses_khash()
    assert type(int64_map()).__name__ == "Int64HashTable"


def test_an_untested_pandas_falls_back_to_the_public_api_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pd, "__version__", "9.0.0")
    monkeypatch.setattr(hash_index, "_warned", [])
    with caplog.at_level(logging.WARNING, logger="embedding_store.hash_index"):
        maps = [int64_map(), int64_map(), object_map()]
    assert [type(m) for m in maps] == [IndexMap, IndexMap, IndexMap]
    assert [r.getMessage() for r in caplog.records] == [
        "pandas 9.0.0 is not one the khash tables were tested on; "
        "using the public pd.Index API (slower inserts)"
    ]


def test_only_hash_index_touches_pandas_private_tables() -> None:
    """Every other module gets its maps through ``hash_index`` (version gate, public fallback)."""
    root = Path(__file__).resolve().parents[3]
    offenders = [
        str(path.relative_to(root))
        for package in ("embedding_store", "pipeline", "operators", "configs")
        for path in sorted((root / package).rglob("*.py"))
        if "pandas._libs" in path.read_text(encoding="utf-8")
        and path != root / "embedding_store" / "hash_index.py"
    ]
    assert offenders == []
