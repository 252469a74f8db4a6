"""The import contract: packages form layers, lower layers never import higher ones.

::

    pipeline.cli                      the commands wire everything below
    pipeline.testing                  harnesses shipped with the package
    configs                           pydantic edge: validates YAML, builds the specs below
    pipeline.serving                  replicas
    pipeline.embedservice             the shared embedding service (shards, client, cache)
    pipeline.training                 models, trainer, the one job loop and its spec
    pipeline.publishing               deltas, snapshots, the publisher and its plugin
    pipeline.source                   Kafka in
    pipeline.features                 events -> batches
    pipeline.events                   kinds, formats, generators, replay
    pipeline.broker                   Kafka connectivity
    pipeline.errors, pipeline.runtime the root error, logging, secrets
    operators                         scheduled jobs, checkpoints
    embedding_store                   the store

An import counts wherever it is written (module level or inside a function); imports under
``if TYPE_CHECKING:`` are annotations only and do not count. Besides the layers: no cycle
between modules, and no first-party import inside a function (they hid the old cycles).
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("embedding_store", "operators", "pipeline", "configs")
LAYERS: tuple[tuple[str, ...], ...] = (
    ("embedding_store",),
    ("operators",),
    ("pipeline.errors", "pipeline.runtime"),
    ("pipeline.broker",),
    ("pipeline.events",),
    ("pipeline.features",),
    ("pipeline.source",),
    ("pipeline.publishing",),
    ("pipeline.training",),
    ("pipeline.embedservice",),
    ("pipeline.serving",),
    ("configs",),
    ("pipeline.testing",),
    ("pipeline.cli", "pipeline"),
)


@dataclass(frozen=True)
class Import:
    """One first-party import: who imports what, where, and whether inside a function."""

    source: str
    target: str
    line: int
    in_function: bool


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return hidden


def _function_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    return inside


def collect_imports(root: Path, packages: Iterable[str] = PACKAGES) -> list[Import]:
    """Every first-party import of the modules under ``root``'s ``packages``."""
    modules = {
        module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))
    }

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        hidden, inside = _type_checking_nodes(tree), _function_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            targets: list[str | None] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    resolve(f"{node.module}.{alias.name}") or resolve(node.module)
                    for alias in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [resolve(alias.name) for alias in node.names]
            for target in targets:
                if target is not None and target != name:
                    found.append(Import(name, target, node.lineno, id(node) in inside))
    return found


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the longest group that ``module`` belongs to."""
    best, depth = -1, -1
    for i, groups in enumerate(LAYERS):
        for group in groups:
            if (module == group or module.startswith(group + ".")) and group.count(".") > depth:
                best, depth = i, group.count(".")
    if best < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best


def layer_violations(imports: Iterable[Import]) -> list[str]:
    return [
        f"{i.source}:{i.line} imports {i.target} (layer {layer_of(i.target)} above "
        f"{layer_of(i.source)})"
        for i in imports
        if layer_of(i.target) > layer_of(i.source)
    ]


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges: dict[str, set[str]] = {}
    for i in imports:
        edges.setdefault(i.source, set()).add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = itertools.count()

    def visit(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(edges):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


IMPORTS = collect_imports(REPO)


def test_no_lower_layer_imports_a_higher_one() -> None:
    assert layer_violations(IMPORTS) == []


def test_no_import_cycles() -> None:
    assert cycles(IMPORTS) == []


def test_no_first_party_import_inside_a_function() -> None:
    lazy = [f"{i.source}:{i.line} imports {i.target}" for i in IMPORTS if i.in_function]
    assert lazy == []


def test_every_module_is_in_a_layer() -> None:
    for i in IMPORTS:
        layer_of(i.source)
        layer_of(i.target)


# -- the contract's own checks: it must fail on the mistakes it guards against --------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, body in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


def test_the_contract_catches_a_lower_layer_importing_a_higher_one(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "embedding_store/store.py": "from pipeline.training.job import TrainJob\n",
            "pipeline/training/__init__.py": "",
            "pipeline/training/job.py": "from embedding_store.store import x\n",
        },
    )
    found = layer_violations(collect_imports(root))
    assert found == ["embedding_store.store:1 imports pipeline.training.job (layer 8 above 0)"]
    assert cycles(collect_imports(root)) == [["embedding_store.store", "pipeline.training.job"]]


def test_the_contract_sees_function_imports_but_not_type_checking_ones(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "operators/a.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from configs.job import JobConfig\n"
                "def f():\n    from pipeline.cli import main\n"
            ),
            "pipeline/cli/__init__.py": "",
            "pipeline/cli/main.py": "",
            "configs/job.py": "",
        },
    )
    imports = collect_imports(root)
    assert [(i.target, i.in_function) for i in imports] == [("pipeline.cli.main", True)]
    assert len(layer_violations(imports)) == 1


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("pipeline.errors", 2),
        ("pipeline.cli.train", len(LAYERS) - 1),
        ("operators.checkpoint.chain", 1),
    ],
)
def test_layer_of(module: str, layer: int) -> None:
    assert layer_of(module) == layer
