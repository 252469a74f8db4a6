"""``freshet checkpoint list|verify|restore|compact``: look after a checkpoint directory.

::

    freshet checkpoint list    --dir CKPT [--json]
    freshet checkpoint verify  --dir CKPT [ID ...]           every file against its sha256
    freshet checkpoint restore --dir CKPT --store-path NEW [--id ID] [--num-shards N]
                               [--clear] [--dense-out FILE.npz]
    freshet checkpoint compact --dir CKPT [--chain N] [--retention N]

``restore`` rebuilds the store from the schema recorded in the checkpoint (tables, optimizers,
shards), into a new directory, and prints the version, source offsets and config hash as
JSON. Exit codes: 0 success, 1 a checkpoint failed verification (or cannot be restored),
2 usage (bad arguments, no such directory or checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import numpy as np

from embedding_store import EmbeddingStore
from embedding_store.errors import EmbeddingStoreError
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.patches import with_layers
from operators.checkpoint.store_schema import store_config_from_json
from operators.errors import (
    ChainManifestError,
    CheckpointError,
    CheckpointNotFoundError,
    NoCompleteCheckpointError,
)

log = logging.getLogger(__name__)

OK, FAILED, USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``freshet checkpoint``'s actions and options."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", required=True, help="checkpoint root directory")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("list", parents=[common], help="list chains and checkpoints")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    p = sub.add_parser("verify", parents=[common], help="check every file's sha256")
    p.add_argument("ids", nargs="*", metavar="ID", help="checkpoints (default: all)")
    p.add_argument("--json", action="store_true", help="problems as JSON")
    p = sub.add_parser("restore", parents=[common], help="rebuild a store from a checkpoint")
    p.add_argument("--id", default=None, help="checkpoint id (default: the latest complete)")
    p.add_argument("--store-path", required=True, help="directory of the store to create")
    p.add_argument("--num-shards", type=int, default=None, help="override the recorded shards")
    p.add_argument("--clear", action="store_true", help="delete rows the store already holds")
    p.add_argument("--dense-out", default=None, help="write the dense arrays to this .npz")
    p = sub.add_parser("compact", parents=[common], help="fold a chain into one full checkpoint")
    p.add_argument("--chain", type=int, default=None, help="chain number (default: newest)")
    p.add_argument("--retention", type=int, default=None, help="chains to keep afterwards")


def _usage(message: str) -> int:
    print(f"freshet checkpoint: {message}", file=sys.stderr)
    return USAGE


def _failed(message: str) -> int:
    print(f"freshet checkpoint: {message}", file=sys.stderr)
    return FAILED


def run(args: argparse.Namespace) -> int:
    """Run the chosen action."""
    if not os.path.isdir(args.dir):
        return _usage(f"no checkpoint directory at {args.dir!r}")
    retention = getattr(args, "retention", None)
    if retention is not None and retention < 1:
        return _usage("--retention must be >= 1")
    manager = CheckpointManager(args.dir, retention=retention or 1_000_000)
    try:
        action = {"list": _list, "verify": _verify, "restore": _restore, "compact": _compact}
        return action[args.action](manager, args)
    except CheckpointNotFoundError as err:
        return _usage(str(err))
    except ChainManifestError as err:
        return _failed(str(err))
    finally:
        manager.close()


def _list(manager: CheckpointManager, args: argparse.Namespace) -> int:
    infos = manager.list()
    if args.json:
        print(json.dumps([i.to_json() for i in infos], indent=1))
        return OK
    if not infos:
        print(f"no checkpoints under {manager.root}")
        return OK
    print(
        f"{'id':<12} {'kind':<12} {'version':>10} {'rows':>12} {'tombstones':>10} "
        f"{'bytes':>14}  created (UTC)"
    )
    for i in infos:
        print(
            f"{i.id:<12} {i.kind.value:<12} {i.version:>10} {i.rows:>12} {i.tombstones:>10} "
            f"{i.bytes:>14}  {i.created_at.isoformat(timespec='seconds')}"
        )
    return OK


def _verify(manager: CheckpointManager, args: argparse.Namespace) -> int:
    ids = args.ids or [i.id for i in manager.list()]
    report: dict[str, list[str]] = {}
    for ident in ids:
        report[ident] = [str(p) for p in manager.verify(ident, with_chain=bool(args.ids))]
    bad = {k: v for k, v in report.items() if v}
    if args.json:
        print(json.dumps({"checked": ids, "problems": bad}, indent=1))
    else:
        for ident in ids:
            print(f"{ident}: {'ok' if not report[ident] else 'FAILED'}")
            for problem in report[ident]:
                print(f"  {problem}")
    return FAILED if bad else OK


def _restore(manager: CheckpointManager, args: argparse.Namespace) -> int:
    if args.num_shards is not None and args.num_shards < 1:
        return _usage("--num-shards must be >= 1")
    ident = args.id
    if ident is None:
        latest = manager.latest_complete()
        if latest is None:
            return _failed(f"no complete checkpoint under {manager.root!r}")
        ident = latest.id
    try:
        schema = manager.reader(ident).manifest().store_schema
        config = store_config_from_json(schema, args.store_path, args.num_shards)
        with EmbeddingStore(config) as store:
            state = manager.restore(store, ident, clear=args.clear)
            rows = {t.name: store.stats(t.name, count_cold=True).cold_rows for t in store.tables}
    except CheckpointNotFoundError:
        raise
    except (CheckpointError, NoCompleteCheckpointError, EmbeddingStoreError) as err:
        return _failed(str(err))
    if args.dense_out:
        # the chain's patch layers (e.g. the featurizer state: whole, then each increment's
        # changes) under their ``patch/NNNN/<name>`` names
        arrays: dict[str, Any] = with_layers(state.dense, state.patches)
        np.savez(args.dense_out, allow_pickle=False, **arrays)
    summary: dict[str, Any] = {
        "checkpoint": state.checkpoint,
        "version": state.version,
        "store_path": os.path.abspath(args.store_path),
        "rows": rows,
        "offsets": dict(state.offsets),
        "config_hash": state.config_hash,
        "dense": sorted(state.dense),
        "patch_layers": len(state.patches),
    }
    print(json.dumps(summary, indent=1))
    return OK


def _compact(manager: CheckpointManager, args: argparse.Namespace) -> int:
    try:
        info = manager.compact(args.chain)
    except CheckpointNotFoundError:
        raise
    except (CheckpointError, NoCompleteCheckpointError) as err:
        return _failed(str(err))
    print(json.dumps(info.to_json(), indent=1))
    return OK
