"""Start N local ranks of the distributed job, torchrun-style, and wait for them.

``freshet train --nproc N`` calls :func:`launch`. Each rank is a ``python -m
pipeline.training.distributed_job`` process with the environment torchrun would give it::

    launch(config, nproc=2)
      ├─ rendezvous store, hosted here, listening on 127.0.0.1:<free> only
      ├─ rank 0: MASTER_ADDR=127.0.0.1 MASTER_PORT=<free> RANK=0 LOCAL_RANK=0 WORLD_SIZE=2
      └─ rank 1: MASTER_ADDR=127.0.0.1 MASTER_PORT=<free> RANK=1 LOCAL_RANK=1 WORLD_SIZE=2
    the first rank to fail (or a SIGINT/SIGTERM here) stops the others; the exit status is
    the first failure's, else 0

The rendezvous store (torch.distributed's ``TCPStore``, unauthenticated) is hosted by the
launcher, as torchrun's agent hosts it, on a socket bound to the master address alone: left to
rank 0, torch binds it on every interface (``:::MASTER_PORT``). The ranks connect to it as
clients (``TORCHELASTIC_USE_AGENT_STORE``), and gloo's own connections use the loopback
interface (``GLOO_SOCKET_IFNAME=lo`` unless set). The same job runs under torchrun itself:
``torchrun --nproc-per-node N -m pipeline.training.distributed_job --config FILE``.

>>> rank_environment(1, 2, 29500)["RANK"], rank_environment(1, 2, 29500)["WORLD_SIZE"]
('1', '2')
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from types import FrameType
from typing import Any, Final

from torch.distributed import TCPStore  # type: ignore[attr-defined]

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

MODULE = "pipeline.training.distributed_job"
_STOP_GRACE_S = 20.0
MASTER_ADDR: Final = "127.0.0.1"
"""Where the rendezvous store listens: the ranks are all on this machine."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rendezvous_store(world: int, host: str = MASTER_ADDR) -> tuple[Any, int]:
    """A ``TCPStore`` server for ``world`` ranks listening on ``host`` only; ``(store, port)``.

    The store owns the listening socket (closed with the store); keep it alive while the
    ranks run.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(max(16, world))
    port = int(sock.getsockname()[1])
    store = TCPStore(
        host,
        port,
        world_size=world,
        is_master=True,
        timeout=timedelta(seconds=600),
        wait_for_workers=False,
        master_listen_fd=sock.fileno(),
    )
    sock.detach()  # the store's server closes the descriptor
    return store, port


def rank_environment(
    rank: int, world: int, port: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of local rank ``rank`` of ``world`` (what torchrun sets).

    The ranks join the store :func:`rendezvous_store` hosts on ``MASTER_ADDR:port``.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        MASTER_ADDR=MASTER_ADDR,
        MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        GROUP_RANK="0",
    )
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    if any(name == "lo" for _, name in socket.if_nameindex()):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pair sockets: loopback only
    return env


def launch(
    config_path: str,
    nproc: int,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> int:
    """Run ``nproc`` ranks of the job on ``config_path`` here; returns the exit status.

    ``extra_args`` go to every rank (``--max-events``, ``--idle-timeout``,
    ``--checkpoint-dir``, ``--checkpoint-every``, ``--restore``).
    """
    if nproc < 1:
        raise ConfigError("nproc", f"must be at least 1, got {nproc}")
    store, port = rendezvous_store(nproc)
    cmd = [python, "-m", MODULE, "--config", config_path, *extra_args]
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in previous:
            signal.signal(s, forward)
    except ValueError:  # not the main thread: no forwarding
        previous = {}
    try:
        for rank in range(nproc):
            procs.append(subprocess.Popen(cmd, env=rank_environment(rank, nproc, port)))
        log.info("launched %d ranks of %s (rendezvous %s:%d)", nproc, MODULE, MASTER_ADDR, port)
        return _wait(procs)
    finally:
        _terminate(procs)
        del store  # stops its server
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait(procs: list[subprocess.Popen[bytes]]) -> int:
    """Wait for every rank; the first failure stops the rest and is returned."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [(rank, c) for rank, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            rank, code = failed[0]
            log.error("rank %d exited with status %d; stopping the other ranks", rank, code)
            _terminate(procs)
            return int(code or 1)
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
