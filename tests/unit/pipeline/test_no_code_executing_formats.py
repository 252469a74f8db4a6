"""Nothing executable crosses a process boundary (DESIGN decision 5): no pickle anywhere.

Scans the source of every package with the ast: no import of pickle-family modules, no
``torch.load``/``torch.save`` (pickle underneath), no ``np.load`` without
``allow_pickle=False`` and no ``allow_pickle=True``, no ``eval``/``exec``, and YAML only through
``yaml.safe_load`` (no ``yaml.load``/``unsafe_load``/``full_load``, which build Python
objects from tags). Deleting a guard makes this fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("embedding_store", "pipeline", "operators", "configs")
BANNED_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [
                f"imports {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES
            ]
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES
        ):
            out.append(f"imports from {node.module}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("eval", "exec")
        ):
            out.append(f"line {node.lineno}: calls {node.func.id}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = f"{owner.id}.{node.func.attr}" if isinstance(owner, ast.Name) else ""
            kw = {k.arg: k.value for k in node.keywords}
            if name in ("torch.load", "torch.save"):
                out.append(f"calls {name} (pickle)")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                out.append(f"line {node.lineno}: {name} (builds objects from tags)")
            if name in ("np.load", "numpy.load"):
                guard = kw.get("allow_pickle")
                if not (isinstance(guard, ast.Constant) and guard.value is False):
                    out.append(f"line {node.lineno}: np.load without allow_pickle=False")
            allow = kw.get("allow_pickle")
            if isinstance(allow, ast.Constant) and allow.value is True:
                out.append(f"line {node.lineno}: allow_pickle=True")
    return out


def test_the_scan_finds_a_planted_pickle(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport numpy as np\nimport yaml\nx = np.load('f.npy')\n"
        "y = yaml.load(open('c'))\nz = eval('1')\n"
    )
    assert len(problems(bad)) == 4


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_pickle(path: Path) -> None:
    assert problems(path) == []


def test_every_file_a_checkpoint_or_a_delta_writes_is_data_only(tmp_path: Path) -> None:
    """Files on disk and on the wire are JSON, .npy (no object arrays) or safetensors."""
    import json

    import numpy as np
    import torch
    from safetensors.numpy import load

    from embedding_store import EmbeddingStore, StoreConfig, TableConfig
    from operators.checkpoint.manager import CheckpointManager
    from pipeline.publishing.array_bundle import encode_bundle

    with EmbeddingStore(StoreConfig(str(tmp_path / "s"), (TableConfig("t", 4),))) as store:
        store.lookup("t", np.arange(5, dtype=np.int64))
        store.end_step()
        dense = {"w": torch.ones(2, 2), "n": np.arange(3)}
        manager = CheckpointManager(str(tmp_path / "ckpt"))
        manager.write_full(store, dense, {"p": 1}, "cfg")
        manager.write_incremental(store, dense, {"p": 2}, "cfg")
    kinds: set[str] = set()
    for path in sorted((tmp_path / "ckpt").rglob("*")):
        if not path.is_file() or path.name == ".lock":
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".npy":
            assert not np.load(path, allow_pickle=False).dtype.hasobject
        else:
            assert path.suffix == ".safetensors", path
            assert all(not a.dtype.hasobject for a in load(data).values())
        kinds.add(path.suffix)
    assert kinds == {".json", ".npy", ".safetensors"}
    assert load(encode_bundle({"v": 1}, {"x": np.arange(3)}))["x"].tolist() == [0, 1, 2]
