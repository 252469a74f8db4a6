"""``freshet inspect --store PATH``: what a store directory holds, without a job config.

Reads ``schema.json`` to learn the tables, opens every shard's RocksDB *read-only* (so it
also works beside a running trainer, seeing what was flushed), and prints::

    store ./freshet-data/fraud/store: 4 shards, format 1, version 1520
    table  dim  optimizer  state  hot rows  cold rows
    tx       8  adagrad        8         0     40211
    ...
    checkpoints in ./freshet-data/fraud/checkpoints:
    chain 7: 000007-0000 full v=1500 rows=40211 ─► 000007-0001 incremental v=1520 rows=412

Hot rows live in a trainer's DRAM and are 0 here: a closed store has flushed every row to
RocksDB, and a running trainer reports its DRAM rows on ``/metrics``
(``freshet_store_rows{tier="hot"}``). Cold rows are counted exactly (one key scan per shard).

Exit codes: 0 done, 1 RocksDB or the checkpoint manifest failed, 2 not a store directory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embedding_store.errors import EmbeddingStoreError
from embedding_store.rocks import RocksShard
from embedding_store.rows import RowLayout


@dataclass(frozen=True)
class TableReport:
    """One table: its shape and its rows per tier."""

    name: str
    dim: int
    optimizer: str
    state_dim: int
    hot_rows: int
    cold_rows: int


@dataclass
class StoreReport:
    """What :func:`inspect_store` found."""

    path: str
    num_shards: int
    format: int
    version: int
    tables: list[TableReport] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] | None = None
    note: str | None = None


class NotAStoreError(ValueError):
    """The directory has no readable ``schema.json``."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path} is not a Freshet store directory: {detail}")


class CheckpointListingError(RuntimeError):
    """The checkpoint directory's manifest could not be read."""

    def __init__(self, root: Path, err: BaseException) -> None:
        super().__init__(f"cannot list the checkpoints in {root}: {err}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``freshet inspect``'s options."""
    parser.add_argument("--store", required=True, type=Path, help="store directory")
    parser.add_argument(
        "--checkpoints", type=Path, default=None, metavar="DIR", help="checkpoint directory"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def read_schema(path: Path) -> dict[str, Any]:
    """The store's ``schema.json``: format, shard count and table shapes."""
    schema_path = path / "schema.json"
    try:
        schema: dict[str, Any] = json.loads(schema_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotAStoreError(path, "no schema.json") from None
    except (OSError, ValueError) as err:
        raise NotAStoreError(path, f"unreadable schema.json ({err})") from err
    if not isinstance(schema.get("tables"), dict) or not isinstance(schema.get("num_shards"), int):
        raise NotAStoreError(path, "schema.json has no tables or num_shards")
    return schema


def inspect_store(path: Path) -> StoreReport:
    """Count each table's rows in every shard and read the store's version (read-only).

    >>> import tempfile, numpy as np
    >>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with EmbeddingStore(StoreConfig(d, (TableConfig("ads", 4),), num_shards=2)) as s:
    ...         ids = np.arange(10, dtype=np.int64)
    ...         _ = s.apply_gradients("ads", ids, s.lookup("ads", ids).numpy()); _ = s.step()
    ...     report = inspect_store(Path(d))
    >>> report.version, [(t.name, t.hot_rows, t.cold_rows) for t in report.tables]
    (1, [('ads', 0, 10)])
    """
    schema = read_schema(path)
    tables: dict[str, dict[str, Any]] = schema["tables"]
    names = sorted(tables)
    cold = dict.fromkeys(names, 0)
    version = 0
    for i in range(schema["num_shards"]):
        shard = RocksShard(str(path / f"shard-{i:04d}"), names, read_only=True)
        shard.open()
        try:
            for name in names:
                t = tables[name]
                cold[name] += shard.tier(name, RowLayout(t["dim"], t["state_dim"])).count()
            if i == 0:
                meta = shard.get_meta("state")
                version = int(json.loads(meta)["version"]) if meta else 0
        finally:
            shard.close()
    return StoreReport(
        path=str(path),
        num_shards=schema["num_shards"],
        format=int(schema.get("format", 0)),
        version=version,
        tables=[
            TableReport(
                n, tables[n]["dim"], tables[n]["optimizer"], tables[n]["state_dim"], 0, cold[n]
            )
            for n in names
        ],
    )


def list_checkpoints(root: Path) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Every committed checkpoint under ``root``, oldest first, or ``(None, why not)``."""
    try:
        module = importlib.import_module("operators.checkpoint.manager")
    except ImportError as err:
        return None, f"checkpoint listing unavailable: operators.checkpoint.manager ({err})"
    if not root.is_dir():
        return None, f"no checkpoint directory at {root}"
    failures: tuple[type[BaseException], ...] = (OSError, ValueError)
    errors = sys.modules.get("operators.errors")
    if errors is not None:
        failures += (errors.OperatorError,)
    try:
        infos = module.CheckpointManager(str(root)).list()
    except failures as err:
        raise CheckpointListingError(root, err) from err
    return [info.to_json() for info in infos], None


def _print_text(report: StoreReport) -> None:
    print(
        f"store {report.path}: {report.num_shards} shards, format {report.format}, "
        f"version {report.version}"
    )
    rows = [("table", "dim", "optimizer", "state", "hot rows", "cold rows")]
    rows += [
        (t.name, str(t.dim), t.optimizer, str(t.state_dim), str(t.hot_rows), str(t.cold_rows))
        for t in report.tables
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [
            c.ljust(w) if i in (0, 2) else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    print("(hot rows are in a trainer's DRAM: see freshet_store_rows on its /metrics)")
    if report.checkpoints is not None:
        print(f"checkpoints: {len(report.checkpoints)}")
        chains: dict[int, list[dict[str, Any]]] = {}
        for c in report.checkpoints:
            chains.setdefault(int(c["chain"]), []).append(c)
        for chain, items in chains.items():
            links = " ─► ".join(
                f"{c['id']} {c['kind']} v={c['version']} rows={c['rows']}" for c in items
            )
            print(f"  chain {chain}: {links}")
    if report.note:
        print(report.note)


def run(args: argparse.Namespace) -> int:
    """Inspect the store (and checkpoints); exit 2 if the path is not a store."""
    try:
        report = inspect_store(args.store)
    except NotAStoreError as err:
        print(f"freshet inspect: {err}", file=sys.stderr)
        return 2
    except EmbeddingStoreError as err:
        print(f"freshet inspect: {err}", file=sys.stderr)
        return 1
    if args.checkpoints is not None:
        try:
            report.checkpoints, report.note = list_checkpoints(args.checkpoints)
        except CheckpointListingError as err:
            print(f"freshet inspect: {err}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        _print_text(report)
    return 0
