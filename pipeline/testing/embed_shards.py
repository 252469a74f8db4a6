"""Shards of the embedding service as real processes on loopback, for tests and benchmarks.

Each :class:`ShardProcess` runs ``python -m pipeline.cli.main embed-serve`` on a fixed port
(so a killed shard comes back where its clients look for it) and a directory of its own.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ShardProcess:
    """One ``freshet embed-serve`` process; ``start`` waits until it listens."""

    def __init__(
        self, path: str | Path, shard: int, num_shards: int, port: int, *extra: str
    ) -> None:
        self.path = Path(path)
        self.shard = shard
        self.num_shards = num_shards
        self.port = port
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> ShardProcess:
        """Start the process and wait for its ready line."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._log = open(self.path.with_suffix(".log"), "a", encoding="utf-8")
        cmd = [
            sys.executable, "-m", "pipeline.cli.main", "embed-serve",
            "--path", str(self.path), "--port", str(self.port),
            "--shard", str(self.shard), "--num-shards", str(self.num_shards), *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, env=dict(os.environ)
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("grpc://"):
                    self.starts += 1
                    return self
            if self.proc.poll() is not None:
                break
        log_name = self._log.name
        self.stop()
        raise RuntimeError(f"embed-serve shard {self.shard} did not start: see {log_name}")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait (the shard checkpoints on the way out)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def pid(self) -> int:
        """The process id (for RSS)."""
        assert self.proc is not None
        return self.proc.pid


def start_shards(root: str | Path, num_shards: int, *extra: str) -> list[ShardProcess]:
    """Start ``num_shards`` shards under ``root`` (``shard-<i>``), each on a free port."""
    shards = [
        ShardProcess(Path(root) / f"shard-{i}", i, num_shards, free_port(), *extra)
        for i in range(num_shards)
    ]
    try:
        for s in shards:
            s.start()
    except BaseException:
        for s in shards:
            s.stop()
        raise
    return shards
