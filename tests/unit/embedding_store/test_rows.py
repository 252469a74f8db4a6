"""The row layout and RocksDB key/value encoding, byte by byte (mutation testing, issue 17)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from embedding_store.rows import KEY_DTYPE, RowLayout, decode_keys, encode_keys


def test_layout_fields_offsets_and_width() -> None:
    layout = RowLayout(dim=3, state_dim=2)
    dt = layout.dtype
    assert dt.names == ("version", "last_step", "last_time", "freq", "epoch", "emb", "state")
    assert [dt.fields[n][1] for n in dt.names] == [0, 8, 16, 24, 28, 32, 44]
    assert dt["version"] == np.dtype("<i8") and dt["last_time"] == np.dtype("<f8")
    assert dt["freq"] == np.dtype("<f4") and dt["epoch"] == np.dtype("<i4")
    assert dt["emb"].shape == (3,) and dt["state"].shape == (2,)
    assert layout.row_bytes == 8 + 8 + 8 + 4 + 4 + 4 * 3 + 4 * 2
    no_state = RowLayout(dim=3, state_dim=0)
    assert "state" not in (no_state.dtype.names or ())
    assert no_state.row_bytes == 44


def test_empty_and_state_columns() -> None:
    layout = RowLayout(dim=2, state_dim=1)
    block = layout.empty(5)
    assert block.shape == (5,) and block.dtype == layout.dtype
    block["state"] = np.arange(5, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(layout.state(block)[:, 0], np.arange(5))
    bare = RowLayout(dim=2, state_dim=0)
    state = bare.state(bare.empty(4))
    assert state.shape == (4, 0) and state.dtype == np.float32


def test_rows_roundtrip_through_bytes() -> None:
    layout = RowLayout(dim=2, state_dim=1)
    block = np.zeros(3, dtype=layout.dtype)
    block["version"] = [7, -1, 2**40]
    block["last_time"] = [1.5, 2.25, -3.0]
    block["freq"] = [0.5, 1.0, 9.0]
    block["emb"] = [[1, 2], [3, 4], [5, 6]]
    block["state"] = [[0.1], [0.2], [0.3]]
    values = layout.encode(block)
    assert [len(v) for v in values] == [layout.row_bytes] * 3
    assert values[0][:8] == (7).to_bytes(8, "little")  # little-endian, version first
    back = layout.decode(values)
    assert back.tobytes() == block.tobytes()
    back["freq"] += 1  # writable
    assert layout.decode([]).shape == (0,)
    assert layout.decode([]).dtype == layout.dtype


def test_keys_are_big_endian_and_sort_in_id_order() -> None:
    ids = np.array([258, 1, 0, 2**40], dtype=np.int64)
    keys = encode_keys(ids)
    assert keys[0] == (258).to_bytes(8, "big")
    assert sorted(keys) == [encode_keys(np.array([i]))[0] for i in sorted(ids.tolist())]
    back = decode_keys(keys)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, ids)
    assert KEY_DTYPE == np.dtype(">i8")
    empty = decode_keys([])
    assert empty.shape == (0,) and empty.dtype == np.int64


def test_a_layout_is_immutable() -> None:
    """Tiers share one layout and cache its dtype: changing ``dim`` later would desync them."""
    layout = RowLayout(dim=2, state_dim=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.dim = 3  # type: ignore[misc]
