"""Patch layers as dense names: ``patch/<layer:04d>/<name>``, split back in order, refusals named.

The manager stores layers among the dense arrays and restore splits them out again; a name it
misreads would hand a featurizer another layer's arrays, or drop a layer, without any error.
"""

from __future__ import annotations

import pytest

from operators.checkpoint.patches import PATCH_PREFIX, chain_layers, split_layers, with_layers
from operators.errors import DenseStateError


def test_layers_are_named_by_their_four_digit_number_from_start() -> None:
    w, a, b, c = object(), object(), object(), object()
    dense = {"w": w}
    out = with_layers(dense, [{"a": a}, {"b": b, "c/d": c}], start=7)
    assert out == {"w": w, "patch/0007/a": a, "patch/0008/b": b, "patch/0008/c/d": c}
    assert out["patch/0007/a"] is a
    assert dense == {"w": w}  # the caller's mapping is left alone
    assert with_layers({}, [{"a": 1}, {"a": 2}]) == {"patch/0000/a": 1, "patch/0001/a": 2}
    assert with_layers({"w": 1}, []) == {"w": 1}
    assert PATCH_PREFIX == "patch/"


def test_split_gives_the_plain_arrays_and_every_layer_in_order() -> None:
    dense = {
        "w": 1,
        "patch/0002/x": 5,
        "model/patch/0000/k": 2,  # not under the prefix: a plain array
        "patch/0000/k": 3,
        "patch/0001/a/b": 4,  # a name may hold "/" itself
        "patch/0000/j": 6,
        "v": 7,
    }
    plain, layers = split_layers(dense)
    assert plain == {"w": 1, "model/patch/0000/k": 2, "v": 7}
    assert layers == [{"k": 3, "j": 6}, {"a/b": 4}, {"x": 5}]
    assert split_layers({"w": 1}) == ({"w": 1}, [])
    assert split_layers({}) == ({}, [])
    # the inverse of with_layers, with ten layers and more
    layers_in = [{"k": i} for i in range(12)]
    assert split_layers(with_layers({"w": 0}, layers_in)) == ({"w": 0}, layers_in)


@pytest.mark.parametrize(
    "name", ["patch/0000", "patch/x1/k", "patch//k", "patch/0000/", "patch/-1/k"]
)
def test_a_patch_name_without_layer_and_name_is_refused(name: str) -> None:
    with pytest.raises(DenseStateError) as err:
        split_layers({"w": 1, name: 2})
    assert str(err.value) == f"dense state {name!r}: a patch array is named patch/<layer>/<name>"
    assert err.value.name == name


@pytest.mark.parametrize(
    ("numbers", "listed"), [((0, 2), "[0, 2]"), ((1,), "[1]"), ((1, 2), "[1, 2]")]
)
def test_layers_with_a_gap_are_refused(numbers: tuple[int, ...], listed: str) -> None:
    dense = {f"patch/{n:04d}/k": n for n in numbers}
    with pytest.raises(DenseStateError) as err:
        split_layers(dense)
    assert str(err.value) == f"dense state 'patch/': patch layers {listed} are not 0..n-1"


def test_chain_layers_concatenates_each_checkpoints_layers_base_first() -> None:
    base = with_layers({"w": 0}, [{"k": 0}])
    inc1 = {"w": 1}  # an increment without a layer
    inc2 = with_layers({"w": 2}, [{"k": 2}, {"k": 3}])
    assert chain_layers([base, inc1, inc2]) == [{"k": 0}, {"k": 2}, {"k": 3}]
    assert chain_layers(iter([inc1])) == []
    assert chain_layers([]) == []
