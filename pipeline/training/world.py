"""The ranks one job trains on: one (no collectives) or N in lock-step (torch.distributed).

The step loop asks the world the few things ranks must agree on; with one rank every answer
is local and nothing is sent::

    World.solo()          rank 0 of 1: sum(v) = v, from_root(v) = v, gather(a) = [a]
    World.joined(group)   rank r of N: sum(v)       all_reduce(SUM) of a few ints
                                       from_root(v) rank 0's values on every rank
                                       gather(a)    every rank's arrays, on rank 0

``init_from_env`` joins the world torchrun (or ``freshet train --nproc N``) describes.

>>> world = World.solo()
>>> world.rank, world.size, world.sum([1, 2]), world.from_root([3])
(0, 1, [1, 2], [3])
>>> [a.tolist() for a in world.gather([np.arange(2)])[0]]
[[0, 1]]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

from embedding_store.collectives import ProcessGroup, all_gather_json, all_reduce_ints

AnyArray = npt.NDArray[np.generic]


@dataclass(frozen=True)
class World:
    """The rank of this process among ``size`` ranks (``group``: the torch.distributed group)."""

    rank: int = 0
    size: int = 1
    group: ProcessGroup | None = None

    @classmethod
    def solo(cls) -> World:
        """One rank: no process group, no collectives."""
        return cls()

    @classmethod
    def joined(cls, group: ProcessGroup | None = None) -> World:
        """The rank and size of ``group`` (default: the initialised default group)."""
        if not dist.is_available() or not dist.is_initialized():
            return cls.solo()
        return cls(int(dist.get_rank(group)), int(dist.get_world_size(group)), group)

    @property
    def distributed(self) -> bool:
        """Whether steps are collectives (more than one rank)."""
        return self.size > 1

    def sum(self, values: Sequence[int]) -> list[int]:
        """``values`` summed over the ranks (one all-reduce; local with one rank)."""
        if not self.distributed:
            return [int(v) for v in values]
        return all_reduce_ints(values, self.group)

    def from_root(self, values: Sequence[int]) -> list[int]:
        """Rank 0's ``values`` on every rank: rank 0 decides, the others follow."""
        if not self.distributed:
            return [int(v) for v in values]
        mine = [int(v) for v in values] if self.rank == 0 else [0] * len(values)
        return all_reduce_ints(mine, self.group)

    def gather_json(self, obj: object) -> list[object]:
        """Every rank's ``obj`` (JSON), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        return all_gather_json(obj, self.group)

    def gather(self, arrays: Sequence[AnyArray]) -> list[list[AnyArray]]:
        """Every rank's ``arrays`` on rank 0 (rank order); ``[]`` on the other ranks.

        The ranks must pass the same number of arrays with the same dtypes and trailing
        shapes; lengths may differ.
        """
        if not self.distributed:
            return [list(arrays)]
        out: list[list[AnyArray]] = [[] for _ in range(self.size)]
        for arr in arrays:
            flat = np.ascontiguousarray(arr)
            tail = flat.shape[1:]
            raw = torch.from_numpy(flat.reshape(-1).view(np.uint8).copy())
            sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
            dist.all_gather(sizes, torch.tensor([raw.numel()], dtype=torch.int64), self.group)
            longest = max(int(s) for s in sizes)
            padded = torch.zeros(max(longest, 1), dtype=torch.uint8)
            padded[: raw.numel()] = raw
            got = [torch.zeros_like(padded) for _ in range(self.size)] if self.rank == 0 else None
            dist.gather(padded, got, dst=0, group=self.group)
            if got is None:
                continue
            for r, (g, s) in enumerate(zip(got, sizes, strict=True)):
                part = g[: int(s)].numpy().view(flat.dtype)
                out[r].append(part.reshape((-1, *tail)).copy())
        return out if self.rank == 0 else []


def init_from_env() -> str:
    """Join the world described by torchrun's environment; NCCL where CUDA exists, else gloo.

    ``FRESHET_DIST_BACKEND`` overrides the choice; ``FRESHET_DIST_TIMEOUT_S`` (default 600)
    bounds how long a collective waits for a rank that stopped answering. Returns the backend.
    """
    backend = os.environ.get("FRESHET_DIST_BACKEND") or (
        "nccl" if torch.cuda.is_available() else "gloo"
    )
    if backend == "nccl":  # pragma: no cover - needs CUDA
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=float(os.environ.get("FRESHET_DIST_TIMEOUT_S", "600")))
    dist.init_process_group(backend, timeout=timeout)
    return backend
