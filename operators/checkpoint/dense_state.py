"""Dense parameters and optimizer state as plain named arrays (nothing pickled).

A checkpoint stores a flat ``name -> array`` mapping. :func:`flatten_tree` turns nested
state dicts (``model.state_dict()``, ``optimizer.state_dict()``) into such a mapping plus a
JSON skeleton of the structure and scalars; :func:`unflatten_tree` puts them back together.
Store the skeleton in the checkpoint's ``extra``.

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> opt = torch.optim.Adam(model.parameters(), lr=0.01)
>>> model(torch.ones(1, 2)).sum().backward(); opt.step()
>>> arrays, skeleton = flatten_tree({"model": model.state_dict(), "optim": opt.state_dict()})
>>> sorted(arrays)[:3]
['model/bias', 'model/weight', 'optim/state/0/exp_avg']
>>> tree = unflatten_tree(arrays, skeleton)
>>> opt.load_state_dict(tree["optim"]); tree["optim"]["param_groups"][0]["lr"]
0.01

A checkpoint keeps every dense array in one safetensors file (:data:`DENSE_FILE`); the torch
dtype each came from is in the header's ``__metadata__``:

>>> stored = snapshot_dense({"w": torch.ones(2, dtype=torch.bfloat16), "n": np.arange(3)})
>>> back = decode_dense(encode_dense(stored))
>>> back["w"].tensor().dtype, back["n"].array.tolist()
(torch.bfloat16, [0, 1, 2])
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from operators.errors import DenseStateError

DenseValue: TypeAlias = npt.NDArray[Any] | torch.Tensor
"""What a dense entry may be given as: a numpy array or a (dense) torch tensor."""

DENSE_FILE: Final = "dense.safetensors"
"""The file of a checkpoint that holds its dense arrays (before: one ``dense-NNNN.npy`` each)."""
_FORMAT: Final = "dense/1"

# torch dtypes numpy has no type for: stored as a same-width integer view
_VIEWED: dict[torch.dtype, tuple[str, torch.dtype]] = {
    torch.bfloat16: ("bfloat16", torch.int16),
}
_UNVIEW = {name: dtype for dtype, (name, _) in _VIEWED.items()}


@dataclass(frozen=True)
class DenseArray:
    """One dense array as stored: the numpy array and the torch dtype it came from, if any."""

    array: npt.NDArray[Any]
    torch_dtype: str | None = None

    def tensor(self) -> torch.Tensor:
        """The value as a torch tensor of its original dtype."""
        t = torch.from_numpy(np.array(self.array, copy=True))
        if self.torch_dtype in _UNVIEW:
            return t.view(_UNVIEW[self.torch_dtype])
        return t


def snapshot_dense(dense: Mapping[str, DenseValue]) -> dict[str, DenseArray]:
    """Copy every value of ``dense`` into a numpy array (the trainer may go on mutating them)."""
    out: dict[str, DenseArray] = {}
    for name, value in dense.items():
        if not isinstance(name, str) or not name:
            raise DenseStateError(str(name), "names must be non-empty strings")
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu()
            if t.layout != torch.strided:
                raise DenseStateError(name, f"layout {t.layout} is not dense")
            dtype_name = str(t.dtype).removeprefix("torch.")
            if t.dtype in _VIEWED:
                t = t.contiguous().view(_VIEWED[t.dtype][1])
            try:
                arr = t.numpy().copy()
            except TypeError as err:
                raise DenseStateError(name, f"dtype {t.dtype} has no numpy equivalent") from err
            out[name] = DenseArray(arr, dtype_name)
        elif isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise DenseStateError(name, "object arrays would need pickle")
            out[name] = DenseArray(np.array(value, copy=True))
        else:
            raise DenseStateError(name, f"expected an array or tensor, got {type(value).__name__}")
    return out


def encode_dense(dense: Mapping[str, DenseArray]) -> bytes:
    """Every array of ``dense`` in one safetensors file; the torch dtypes in ``__metadata__``."""
    dtypes = {name: value.torch_dtype for name, value in dense.items()}
    metadata = {"freshet.format": _FORMAT, "freshet.torch_dtypes": json.dumps(dtypes)}
    arrays = {name: np.require(value.array, requirements="C") for name, value in dense.items()}
    try:
        data: bytes = safetensors_save(arrays, metadata=metadata)
    except (SafetensorError, ValueError, KeyError) as err:
        raise DenseStateError(sorted(dense)[0] if dense else "", f"not storable: {err}") from err
    return data


def decode_dense(data: bytes) -> dict[str, DenseArray]:
    """The inverse of :func:`encode_dense`; raises :class:`DenseStateError` on a bad file."""
    try:
        (size,) = np.frombuffer(data[:8], dtype="<u8")
        header = json.loads(data[8 : 8 + int(size)])
        meta = header["__metadata__"]
        if meta["freshet.format"] != _FORMAT:
            raise DenseStateError(DENSE_FILE, f"format {meta['freshet.format']!r}, not {_FORMAT!r}")
        dtypes: dict[str, str | None] = json.loads(meta["freshet.torch_dtypes"])
        arrays = safetensors_load(bytes(data))
    except (SafetensorError, ValueError, KeyError, TypeError) as err:
        raise DenseStateError(DENSE_FILE, f"not a dense-state safetensors file: {err!r}") from err
    if set(arrays) != set(dtypes):
        raise DenseStateError(DENSE_FILE, "arrays and recorded dtypes differ")
    return {name: DenseArray(arrays[name], dtypes[name]) for name in sorted(arrays)}


def flatten_tree(tree: Mapping[str, Any], sep: str = "/") -> tuple[dict[str, DenseValue], Any]:
    """Split a nested state into ``(arrays by path, JSON skeleton)``.

    Leaves may be tensors, arrays, ints, floats, bools, strings or None; containers dicts
    (string or int keys), lists and tuples. No reference cycle is left behind: ``arrays``
    (and the state it points at) goes as soon as the caller drops it, not at the next
    collection of the cyclic garbage collector (a recursive closure would keep it).
    """
    arrays: dict[str, DenseValue] = {}
    return arrays, _flatten(tree, "", sep, arrays)


def _flatten(obj: Any, path: str, sep: str, arrays: dict[str, DenseValue]) -> Any:
    if isinstance(obj, torch.Tensor | np.ndarray):
        arrays[path] = obj
        return {"$array": path}
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise DenseStateError(path, f"key {k!r} is neither str nor int")
            items.append([k, _flatten(v, f"{path}{sep}{k}" if path else str(k), sep, arrays)])
        return {"$dict": items}
    if isinstance(obj, list | tuple):
        kind = "$list" if isinstance(obj, list) else "$tuple"
        return {kind: [_flatten(v, f"{path}{sep}{i}", sep, arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": repr(obj)}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise DenseStateError(path, f"cannot store a {type(obj).__name__} without pickle")


def unflatten_tree(arrays: Mapping[str, DenseValue], skeleton: Any) -> Any:
    """Rebuild what :func:`flatten_tree` split (numpy arrays become tensors)."""
    return _unflatten(skeleton, arrays)


def _unflatten(node: Any, arrays: Mapping[str, DenseValue]) -> Any:
    if isinstance(node, dict):
        if "$array" in node:
            value = arrays[node["$array"]]
            return torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value
        if "$dict" in node:
            return {k: _unflatten(v, arrays) for k, v in node["$dict"]}
        if "$list" in node:
            return [_unflatten(v, arrays) for v in node["$list"]]
        if "$tuple" in node:
            return tuple(_unflatten(v, arrays) for v in node["$tuple"])
        if "$float" in node:
            return float(node["$float"])
    return node
