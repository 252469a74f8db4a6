"""Dense state, edge by edge: the stored skeleton's JSON, the file's header, every refusal.

The skeleton is kept in checkpoints' ``extra`` and the header in ``dense.safetensors``: both
are read back by later versions, so their exact shape is pinned here (golden values), as is
each refusal's whole message.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import save

from operators.checkpoint.dense_state import (
    DENSE_FILE,
    DenseArray,
    decode_dense,
    encode_dense,
    flatten_tree,
    snapshot_dense,
    unflatten_tree,
)
from operators.errors import DenseStateError


def header(data: bytes) -> dict[str, object]:
    (size,) = struct.unpack_from("<Q", data)
    out: dict[str, object] = json.loads(data[8 : 8 + size])
    return out


def test_the_skeleton_is_this_json() -> None:
    a, b, c = np.zeros(1), torch.ones(2), np.ones(3)
    tree = {
        "m": {"w": a},
        "l": [1, 2.5, [b]],
        "t": (None, "s", True, (c,)),
        "f": {3: math.inf, "n": -math.inf, "z": math.nan},
        "i": 0,
    }
    arrays, skeleton = flatten_tree(tree)
    assert arrays == {"m/w": a, "l/2/0": b, "t/3/0": c}
    assert all(arrays[k] is v for k, v in (("m/w", a), ("l/2/0", b), ("t/3/0", c)))
    assert skeleton == {
        "$dict": [
            ["m", {"$dict": [["w", {"$array": "m/w"}]]}],
            ["l", {"$list": [1, 2.5, {"$list": [{"$array": "l/2/0"}]}]}],
            ["t", {"$tuple": [None, "s", True, {"$tuple": [{"$array": "t/3/0"}]}]}],
            [
                "f",
                {
                    "$dict": [
                        [3, {"$float": "inf"}],
                        ["n", {"$float": "-inf"}],
                        ["z", {"$float": "nan"}],
                    ]
                },
            ],
            ["i", 0],
        ]
    }
    json.dumps(skeleton, allow_nan=False)  # plain JSON: no NaN or Infinity literals
    back = unflatten_tree(arrays, json.loads(json.dumps(skeleton)))
    assert list(back) == ["m", "l", "t", "f", "i"]
    assert back["l"][:2] == [1, 2.5] and type(back["l"][0]) is int
    assert back["l"][2][0] is b  # a tensor comes back as itself
    assert back["t"][:3] == (None, "s", True) and type(back["t"][2]) is bool
    assert isinstance(back["t"], tuple) and isinstance(back["t"][3], tuple)
    assert torch.equal(back["t"][3][0], torch.ones(3, dtype=torch.float64))
    assert list(back["f"]) == [3, "n", "z"]
    assert back["f"][3] == math.inf and back["f"]["n"] == -math.inf
    assert math.isnan(back["f"]["z"])
    assert type(back["i"]) is int and back["i"] == 0


def test_paths_use_the_separator_and_arrays_come_back_as_copies() -> None:
    a = np.arange(3)
    arrays, skeleton = flatten_tree({"a": {"b": a, 4: [a]}}, sep=".")
    assert sorted(arrays) == ["a.4.0", "a.b"]
    back = unflatten_tree(arrays, skeleton)
    assert isinstance(back["a"]["b"], torch.Tensor) and back["a"]["b"].tolist() == [0, 1, 2]
    back["a"]["b"] += 1
    assert a.tolist() == [0, 1, 2]  # the caller's array is not written through
    assert unflatten_tree({}, {"other": 1}) == {"other": 1}
    assert unflatten_tree({}, [1, {"$x": 2}]) == [1, {"$x": 2}]


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"a": {True: 1}}, "dense state 'a': key True is neither str nor int"),
        ({"a": {"b": {(1, 2): 1}}}, "dense state 'a/b': key (1, 2) is neither str nor int"),
        ({1.5: 1}, "dense state '': key 1.5 is neither str nor int"),
        ({"a": [{1, 2}]}, "dense state 'a/0': cannot store a set without pickle"),
        ({"a": b"x"}, "dense state 'a': cannot store a bytes without pickle"),
    ],
)
def test_unstorable_trees_are_refused_by_path(tree: dict[object, object], message: str) -> None:
    with pytest.raises(DenseStateError) as err:
        flatten_tree(tree)  # type: ignore[arg-type]
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("dense", "message"),
    [
        ({"": np.zeros(1)}, "dense state '': names must be non-empty strings"),
        ({3: np.zeros(1)}, "dense state '3': names must be non-empty strings"),
        (
            {"x": torch.zeros(2).to_sparse()},
            "dense state 'x': layout torch.sparse_coo is not dense",
        ),
        (
            {"x": torch.zeros(2, dtype=torch.float8_e4m3fn)},
            "dense state 'x': dtype torch.float8_e4m3fn has no numpy equivalent",
        ),
        ({"x": np.array([None])}, "dense state 'x': object arrays would need pickle"),
        ({"x": [1.0]}, "dense state 'x': expected an array or tensor, got list"),
    ],
)
def test_unstorable_values_are_refused_by_name(dense: dict[object, object], message: str) -> None:
    with pytest.raises(DenseStateError) as err:
        snapshot_dense(dense)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_snapshot_records_torch_dtypes_and_leaves_numpy_without() -> None:
    stored = snapshot_dense(
        {
            "f": torch.ones(2, requires_grad=True),
            "h": torch.tensor([1.5], dtype=torch.bfloat16).expand(3),  # not contiguous
            "n": np.ones(2, np.float16),
        }
    )
    assert [(k, v.torch_dtype, v.array.dtype) for k, v in stored.items()] == [
        ("f", "float32", np.float32),
        ("h", "bfloat16", np.int16),
        ("n", None, np.float16),
    ]
    assert stored["h"].tensor().tolist() == [1.5, 1.5, 1.5]
    assert DenseArray(np.zeros(1)).torch_dtype is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        stored["n"].torch_dtype = "float16"  # type: ignore[misc]


def test_a_tensor_from_a_stored_array_is_a_copy() -> None:
    value = DenseArray(np.zeros(2, np.float32), "float32")
    t = value.tensor()
    t += 1
    assert value.array.tolist() == [0.0, 0.0]
    loaded = decode_dense(encode_dense({"w": value}))["w"]
    assert loaded.tensor().add_(2).tolist() == [2.0, 2.0]  # writable, though the file is not


def test_the_file_header_names_the_format_and_each_torch_dtype() -> None:
    stored = snapshot_dense(
        {"b": torch.ones(1, dtype=torch.bfloat16), "a": np.arange(6).reshape(2, 3).T}
    )
    data = encode_dense(stored)
    meta = header(data)["__metadata__"]
    assert meta == {
        "freshet.format": "dense/1",
        "freshet.torch_dtypes": json.dumps({"b": "bfloat16", "a": None}),
    }
    back = decode_dense(data)
    assert list(back) == ["a", "b"]  # sorted by name
    assert back["a"].array.tolist() == [[0, 3], [1, 4], [2, 5]]  # a transposed array, in order
    assert (back["a"].torch_dtype, back["b"].torch_dtype) == (None, "bfloat16")
    assert DENSE_FILE == "dense.safetensors"


def test_an_array_safetensors_cannot_hold_is_refused_by_the_first_name() -> None:
    stored = snapshot_dense({"z": np.zeros(1), "b": np.zeros(2, "datetime64[s]"), "c": np.ones(1)})
    with pytest.raises(DenseStateError) as err:
        encode_dense(stored)
    assert str(err.value).startswith(
        "dense state 'b': not storable: Unknown dtype \"datetime64[s]\". Supported dtypes: "
    )
    assert err.value.name == "b"


def _file(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None) -> bytes:
    return save(arrays, metadata=metadata)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _file(
                {"w": np.zeros(1)},
                {"freshet.format": "dense/2", "freshet.torch_dtypes": '{"w": null}'},
            ),
            "format 'dense/2', not 'dense/1'",
        ),
        (
            _file({"w": np.zeros(1)}, None),
            "not a dense-state safetensors file: KeyError('__metadata__')",
        ),
        (
            _file({"w": np.zeros(1)}, {"freshet.torch_dtypes": '{"w": null}'}),
            "not a dense-state safetensors file: KeyError('freshet.format')",
        ),
        (
            _file({"w": np.zeros(1)}, {"freshet.format": "dense/1"}),
            "not a dense-state safetensors file: KeyError('freshet.torch_dtypes')",
        ),
        (
            _file(
                {"w": np.zeros(1)},
                {"freshet.format": "dense/1", "freshet.torch_dtypes": '{"w": null, "v": null}'},
            ),
            "arrays and recorded dtypes differ",
        ),
    ],
    ids=["other-format", "no-metadata", "no-format", "no-dtypes", "dtypes-differ"],
)
def test_a_file_that_is_not_this_format_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(DenseStateError) as err:
        decode_dense(data)
    assert str(err.value) == f"dense state {DENSE_FILE!r}: {message}"
