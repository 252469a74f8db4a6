"""Start N local ranks of the distributed job, torchrun-style, and wait for them.

``freshet train --nproc N`` calls :func:`launch`. Each rank is a ``python -m
pipeline.cli.rank`` process with the environment torchrun would give it::

    launch(config, nproc=2)
      ├─ rendezvous store, hosted here, listening on 127.0.0.1:<free> only
      ├─ rank 0: MASTER_ADDR=127.0.0.1 MASTER_PORT=<free> RANK=0 LOCAL_RANK=0 WORLD_SIZE=2
      └─ rank 1: MASTER_ADDR=127.0.0.1 MASTER_PORT=<free> RANK=1 LOCAL_RANK=1 WORLD_SIZE=2
    the first rank to fail (or a SIGINT/SIGTERM here) stops the others; the exit status is
    the first failure's, else 0

The rendezvous store (torch.distributed's ``TCPStore``, unauthenticated) is hosted by the
launcher, as torchrun's agent hosts it, on a socket bound to the master address alone: left to
rank 0, torch binds it on every interface (``:::MASTER_PORT``). The ranks connect to it as
clients (``TORCHELASTIC_USE_AGENT_STORE``); on one machine gloo's own connections use the
loopback interface (``GLOO_SOCKET_IFNAME=lo`` unless set).

Across machines (one pod per rank on Kubernetes), every node runs ``freshet train --nnodes M
--node-rank R --master-addr HOST --master-port P``: node ``R``'s local rank ``l`` is global rank
``R * nproc + l`` of ``M * nproc``; node 0's launcher hosts the store on ``HOST:P`` (bound to
that address alone) and every rank joins it as a client.

The same job runs under torchrun itself, with the same file and flags:
``torchrun --nproc-per-node N -m pipeline.cli.rank --config FILE``.

>>> rank_environment(1, 2, 29500)["RANK"], rank_environment(1, 2, 29500)["WORLD_SIZE"]
('1', '2')
>>> env = rank_environment(1, 2, 29500, node=Node(3, 2, "t-0.t", 29500))
>>> env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"], env["GROUP_RANK"]
('5', '1', '6', 't-0.t', '2')
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
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any, Final

from torch.distributed import TCPStore  # type: ignore[attr-defined]

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

MODULE = "pipeline.cli.rank"
_STOP_GRACE_S = 20.0
MASTER_ADDR: Final = "127.0.0.1"
"""Where the rendezvous store listens: the ranks are all on this machine."""


@dataclass(frozen=True)
class Node:
    """A machine's place in a job of ``nnodes`` machines (torchrun's static rendezvous).

    >>> Node().nnodes, Node().master_addr
    (1, '127.0.0.1')
    """

    nnodes: int = 1
    rank: int = 0
    master_addr: str = MASTER_ADDR
    master_port: int | None = None  # None: a free local port (one node only)

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise ConfigError("nnodes", f"must be at least 1, got {self.nnodes}")
        if not 0 <= self.rank < self.nnodes:
            raise ConfigError("node_rank", f"must be in [0, {self.nnodes}), got {self.rank}")
        if self.nnodes > 1 and self.master_port is None:
            raise ConfigError("master_port", "a job of several nodes needs a fixed master port")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rendezvous_store(world: int, host: str = MASTER_ADDR, port: int = 0) -> tuple[Any, int]:
    """A ``TCPStore`` server for ``world`` ranks listening on ``host`` only; ``(store, port)``.

    ``port`` 0 takes a free one. The store owns the listening socket (closed with the store);
    keep it alive while the ranks run.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
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
    rank: int,
    world: int,
    port: int,
    base: Mapping[str, str] | None = None,
    node: Node = Node(),
) -> dict[str, str]:
    """The environment of local rank ``rank`` of ``world`` on ``node`` (what torchrun sets).

    ``world`` is the number of ranks on this node; the job has ``world * node.nnodes``. The
    ranks join the store :func:`rendezvous_store` hosts on ``node.master_addr:port``.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        MASTER_ADDR=node.master_addr,
        MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",
        RANK=str(node.rank * world + rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world * node.nnodes),
        LOCAL_WORLD_SIZE=str(world),
        GROUP_RANK=str(node.rank),
    )
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    if node.nnodes == 1 and any(name == "lo" for _, name in socket.if_nameindex()):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pair sockets: loopback only
    return env


def launch(
    config_path: str,
    nproc: int,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
    node: Node = Node(),
) -> int:
    """Run ``nproc`` ranks of the job on ``config_path`` here; returns the exit status.

    ``extra_args`` go to every rank (``freshet train``'s flags: ``--max-events``,
    ``--idle-timeout``, ``--checkpoint-dir``, ``--checkpoint-every``). ``node`` places this
    machine in a job of several (its ranks' global numbers and the rendezvous address); node
    0 hosts the rendezvous store, the others' ranks join it.
    """
    if nproc < 1:
        raise ConfigError("nproc", f"must be at least 1, got {nproc}")
    store: Any = None
    if node.rank == 0:
        store, port = rendezvous_store(nproc * node.nnodes, node.master_addr, node.master_port or 0)
    else:
        assert node.master_port is not None  # Node checks it for several nodes
        port = node.master_port
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
            env = rank_environment(rank, nproc, port, node=node)
            procs.append(subprocess.Popen(cmd, env=env))
        log.info(
            "launched %d ranks of %s on node %d of %d (rendezvous %s:%d)",
            nproc,
            MODULE,
            node.rank,
            node.nnodes,
            node.master_addr,
            port,
        )
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
