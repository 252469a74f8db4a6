"""`freshet train --nproc N`: the rendezvous store and gloo listen on loopback only.

Regression (issue 21 #6): rank 0 hosted torch.distributed's TCPStore, which binds every
interface (``:::MASTER_PORT``), unauthenticated, although the master address is loopback.
Two real rank processes join the store the launcher hosts and all-reduce; while they wait, every
listening socket of the launcher's store and of the ranks is read from the kernel (psutil).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline.training.launch import MASTER_ADDR, rank_environment, rendezvous_store

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

RANK = """
import os, sys, time, pathlib
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print("ready", dist.get_rank(), t.item(), flush=True)
flag = pathlib.Path(sys.argv[1])
while not flag.exists():
    time.sleep(0.05)
dist.destroy_process_group()
"""


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    return sorted(
        (c.pid, c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    )


def test_rendezvous_and_gloo_listen_on_the_master_address_only(tmp_path: Path) -> None:
    store, port = rendezvous_store(2)
    flag = tmp_path / "done"
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(flag)],
            env=rank_environment(rank, 2, port),
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for rank in range(2)
    ]
    try:
        lines = [p.stdout.readline().split() for p in ranks if p.stdout is not None]
        assert lines == [["ready", "0", "3.0"], ["ready", "1", "3.0"]]  # 1 + 2, all-reduced
        time.sleep(0.2)
        mine = _listening({os.getpid()})
        theirs = _listening({p.pid for p in ranks})
    finally:
        flag.touch()
        codes = [p.wait(timeout=60) for p in ranks]
        del store
    assert codes == [0, 0]
    assert (os.getpid(), MASTER_ADDR, port) in mine  # the store: the master address only
    assert not [c for c in mine if c[2] == port and c[1] != MASTER_ADDR]
    # the ranks host no store of their own; gloo's listeners are on loopback
    assert not [c for c in theirs if c[2] == port]
    assert theirs and all(ip in ("127.0.0.1", "::1") for _, ip, _ in theirs), theirs
