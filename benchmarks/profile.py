"""Sampling profiles of a worker's training phase with py-spy (optional; not a dependency).

::

    worker: prepare ─► Profiler.start(): py-spy record --pid <self> --threads --nonblocking
            warm-up + timed windows (every thread sampled: trainer, prefetch, shard pool)
            Profiler.stop(): SIGINT ─► raw collapsed stacks ─► summarise(): top functions

Install it with ``pip install py-spy``; without it ``--profile`` is refused up front.

>>> stacks = ["a (m.py:1);b (m.py:2) 3", "a (m.py:1);c (m.py:5) 1"]
>>> s = summarise_lines(stacks, top=2)
>>> s["samples"], s["inclusive"][0], s["self"][0]
(4, ['a (m.py)', 1.0], ['b (m.py)', 0.75])
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")


def pyspy_path() -> str | None:
    """py-spy beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy attached to this process until :meth:`stop`."""

    def __init__(self, out: str, rate: int = 100) -> None:
        self.out = out
        self.rate = rate
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Attach py-spy and give it a moment to start sampling."""
        exe = pyspy_path()
        if exe is None:
            raise RuntimeError("py-spy not found: pip install py-spy")
        cmd = [
            exe,
            "record",
            "--pid",
            str(os.getpid()),
            "--threads",
            "--nonblocking",
            "-r",
            str(self.rate),
            "-f",
            "raw",
            "-o",
            self.out,
        ]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)

    def stop(self) -> None:
        """Stop sampling and wait for py-spy to write its file."""
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(timeout=60)
        self._proc = None


def _thread(head: str) -> str:
    """``thread (123): shard_0`` -> ``shard pool``; ``MainThread`` -> ``trainer``."""
    name = head.split(":", 1)[1].strip() if head.startswith("thread (") else "?"
    if name.startswith("shard"):
        return "shard pool"
    return {"MainThread": "trainer"}.get(name, name)


def summarise_lines(lines: Iterable[str], top: int = 30) -> dict[str, Any]:
    """Inclusive and self shares of each function (line numbers dropped), and per thread."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        parts = stack.split(";")
        head = parts[0] if parts[0].startswith("thread (") else ""
        frames = [f for f in parts if not f.startswith(("process ", "thread ("))]
        if not frames:
            continue
        total += n
        threads[_thread(head)] += n
        names = [_LINE.sub(")", f) for f in frames]
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
    share = (lambda c: [[k, v / total] for k, v in c.most_common(top)]) if total else (lambda c: [])
    return {
        "samples": total,
        "threads": {k: v / total for k, v in threads.most_common()} if total else {},
        "inclusive": share(inclusive),
        "self": share(own),
    }


def summarise(path: str, top: int = 30) -> dict[str, Any]:
    """:func:`summarise_lines` of a py-spy raw file."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        return summarise_lines(fh, top)
