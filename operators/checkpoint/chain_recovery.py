"""Rebuild a lost or damaged ``chains.json`` from the checkpoint directories that verify.

``chains.json`` is the commit point, but every fact it records is also in the checkpoints
themselves: each ``manifest.json`` names its chain, position, kind, version and parent, and
lists the sha256 of every other file. So when the chain manifest is missing or unreadable
while chain directories exist, the index is rebuilt from them::

    chain-000006/ckpt-0000  full   ✓ ┐
    chain-000006/ckpt-0001  incr.  ✓ ┘ chain 6: both
    chain-000007/ckpt-0000  full   ✓ ┐
    chain-000007/ckpt-0001  incr.  ✗ │ chain 7: the prefix that verifies, with its parents
    chain-000007/ckpt-0002  incr.  ✓ ┘ in order (0002 builds on the bad 0001: left out)

A chain whose full base does not verify is left out whole. Checkpoints left out stay on disk
until the next commit removes them as unlisted (it logs each one).

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     rebuild_index(d).chains
()
"""

from __future__ import annotations

import json
import logging
import os
import re

from operators.checkpoint.chain import ChainIndex, CheckpointInfo
from operators.checkpoint.durable_io import sha256_file
from operators.checkpoint.format import MANIFEST, CheckpointKind, CheckpointManifest
from operators.checkpoint.reader import CheckpointReader

log = logging.getLogger(__name__)

_CHAIN_DIR = re.compile(r"^chain-(\d{6})$")
_CKPT_DIR = re.compile(r"^ckpt-(\d{4})$")


def chain_dirs(root: str) -> list[int]:
    """The chain numbers that have a directory under ``root``, ascending."""
    if not os.path.isdir(root):
        return []
    found = (_CHAIN_DIR.match(name) for name in os.listdir(root))
    return sorted(int(m.group(1)) for m in found if m is not None)


def _listed(root: str, chain: int, index: int) -> CheckpointInfo | None:
    """What ``chains.json`` would have said of one checkpoint directory, if it verifies."""
    path = os.path.join(root, f"chain-{chain:06d}", f"ckpt-{index:04d}", MANIFEST)
    try:
        sha = sha256_file(path)
        with open(path, encoding="utf-8") as fh:
            manifest = CheckpointManifest.from_json(json.load(fh))
    except (OSError, KeyError, TypeError, ValueError):
        return None
    info = CheckpointInfo(
        id=manifest.id,
        chain=chain,
        index=index,
        kind=manifest.kind,
        version=manifest.version,
        created_at=manifest.created_at,
        manifest_sha256=sha,
        bytes=manifest.bytes + os.path.getsize(path),
        rows=manifest.rows,
        tombstones=manifest.tombstones,
        parent=manifest.parent,
        compacted_from=manifest.compacted_from,
    )
    if (manifest.id, manifest.chain, manifest.index) != (info.id, chain, index):
        return None
    return info if not CheckpointReader(root, info).verify() else None


def rebuild_index(root: str) -> ChainIndex:
    """The chain index the directories under ``root`` support (each chain's verified prefix)."""
    index = ChainIndex()
    numbers = chain_dirs(root)
    for chain in numbers:
        chain_path = os.path.join(root, f"chain-{chain:06d}")
        found = (_CKPT_DIR.match(name) for name in os.listdir(chain_path))
        positions = sorted(int(m.group(1)) for m in found if m is not None)
        previous: CheckpointInfo | None = None  # pragma: no mutate
        for position in positions:
            info = _listed(root, chain, position)
            expected_kind = CheckpointKind.FULL if previous is None else CheckpointKind.INCREMENTAL
            ok = (
                info is not None
                and position == (0 if previous is None else previous.index + 1)
                and info.kind is expected_kind
                and info.parent == (None if previous is None else previous.id)
            )
            if not ok:
                log.warning(
                    "rebuilding %s: %s/ckpt-%04d does not verify or does not follow %s; "
                    "chain %d ends before it",
                    os.path.join(root, "chains.json"),
                    chain_path,
                    position,
                    previous.id if previous is not None else "a full checkpoint",
                    chain,
                )
                break
            assert info is not None
            index = index.appended(info)
            previous = info
    if numbers:
        index = ChainIndex(index.chains, max(index.next_chain, numbers[-1] + 1))
    return index
