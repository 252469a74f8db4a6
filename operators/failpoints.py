"""Failpoints: named places where a test can make the process die, as a crash would.

``FRESHET_FAILPOINTS="checkpoint_file:3,migration:2"`` SIGKILLs the process the 3rd time a
checkpoint file is written and the 2nd time a migration runs. Unset (production), a hit is
one dictionary lookup. Tests use it to crash inside a checkpoint write or a migration.

>>> hit("nothing-armed")
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_counts: dict[str, int] = {}


def _armed() -> dict[str, int]:
    out: dict[str, int] = {}
    for part in os.environ.get("FRESHET_FAILPOINTS", "").split(","):
        name, _, nth = part.strip().partition(":")
        if name and nth.isdigit():
            out[name] = int(nth)
    return out


def hit(name: str) -> None:
    """Count a pass through failpoint ``name``; SIGKILL this process on the armed pass."""
    armed = _armed()
    if name not in armed:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] == armed[name]:
            os.kill(os.getpid(), signal.SIGKILL)
