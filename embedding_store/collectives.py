"""The collectives of the distributed store: all-to-all of variable-length blocks, all-reduce.

An all-to-all moves one block from every rank to every rank. Block sizes differ per pair,
so every exchange is two ``all_to_all_single`` calls: the counts first (one int64 per peer),
then the payload, split by those counts::

    rank 0 send  [ 0→0 | 0→1 ]          counts  [2, 3]  ──►  rank 0 recv counts [2, 1]
    rank 1 send  [ 1→0 | 1→1 ]          counts  [1, 4]  ──►  rank 1 recv counts [3, 4]
                      │    X    │   (each block goes to the rank it names)
    rank 0 recv  [ 0→0 | 1→0 ]          payload rows, in sender order
    rank 1 recv  [ 0→1 | 1→1 ]

Every rank must make the same calls in the same order (collectives match by order), so a
rank with nothing to send still exchanges empty blocks. :class:`Exchange` counts calls and
bytes (all of them, and those that leave the rank) for benchmarks and progress lines.

Gloo runs on CPU tensors; with the NCCL backend the payload goes through the current CUDA
device and comes back to the CPU.

>>> import torch
>>> with single_process_group():
...     ex = Exchange()
...     got = ex.exchange(torch.arange(6.0).view(3, 2), [3], [3])
...     reduced = all_reduce_gradients([torch.nn.Parameter(torch.ones(2))])
...     notes = all_gather_json({"rank": 0, "offsets": {"t/0": 5}})
>>> got.shape, ex.stats.calls, ex.stats.bytes_remote, reduced, notes
(torch.Size([3, 2]), 1, 0, 12, [{'rank': 0, 'offsets': {'t/0': 5}}])
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

ProcessGroup = dist.ProcessGroup


@dataclass
class ExchangeStats:
    """Running totals of one :class:`Exchange` (mutable counters, read between steps)."""

    calls: int = 0
    bytes_sent: int = 0
    bytes_remote: int = 0
    seconds: float = 0.0

    def copy(self) -> ExchangeStats:
        """A frozen-in-time copy (to subtract from a later reading)."""
        return ExchangeStats(self.calls, self.bytes_sent, self.bytes_remote, self.seconds)

    def since(self, earlier: ExchangeStats) -> ExchangeStats:
        """What happened between ``earlier`` and now."""
        return ExchangeStats(
            self.calls - earlier.calls,
            self.bytes_sent - earlier.bytes_sent,
            self.bytes_remote - earlier.bytes_remote,
            self.seconds - earlier.seconds,
        )


class Exchange:
    """All-to-all of variable-length row blocks within a process group, with byte counters.

    Constructing it does nothing; the group (default: the world) must be initialised before
    the first exchange.
    """

    def __init__(self, group: ProcessGroup | None = None) -> None:
        self.group = group
        self.stats = ExchangeStats()

    @property
    def rank(self) -> int:
        """The rank of this process in the group."""
        return int(dist.get_rank(self.group))

    @property
    def world_size(self) -> int:
        """Ranks in the group."""
        return int(dist.get_world_size(self.group))

    def _device(self) -> torch.device:
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def counts(self, send_counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Tell every peer how many rows it will get from this rank; returns what each sends."""
        send = torch.from_numpy(np.ascontiguousarray(send_counts, dtype=np.int64))
        out = self._all_to_all(send, None, None)
        result: npt.NDArray[np.int64] = out.numpy()
        return result

    def exchange(
        self, send: torch.Tensor, send_counts: Sequence[int], recv_counts: Sequence[int]
    ) -> torch.Tensor:
        """Send ``send[rows for peer p]`` to each peer ``p``; returns the rows received.

        ``send`` holds the blocks for peers 0, 1, ... one after the other along dim 0.
        """
        return self._all_to_all(send, list(send_counts), list(recv_counts))

    def _all_to_all(
        self, send: torch.Tensor, send_counts: list[int] | None, recv_counts: list[int] | None
    ) -> torch.Tensor:
        t0 = time.perf_counter()
        world = self.world_size
        rows = send.shape[0]
        recv_rows = sum(recv_counts) if recv_counts is not None else rows
        out = torch.empty((recv_rows, *send.shape[1:]), dtype=send.dtype)
        device = self._device()
        if device.type == "cpu":
            dist.all_to_all_single(
                out, send.contiguous(), recv_counts, send_counts, group=self.group
            )
        else:  # pragma: no cover - needs CUDA
            dev_out = out.to(device)
            dist.all_to_all_single(
                dev_out, send.contiguous().to(device), recv_counts, send_counts, group=self.group
            )
            out = dev_out.cpu()
        row_bytes = send.element_size() * (send[0].numel() if rows else _row_numel(send))
        mine = send_counts[self.rank] if send_counts is not None else rows // max(world, 1)
        self.stats.calls += 1
        self.stats.bytes_sent += rows * row_bytes
        self.stats.bytes_remote += (rows - mine) * row_bytes
        self.stats.seconds += time.perf_counter() - t0
        return out


def _row_numel(t: torch.Tensor) -> int:
    n = 1
    for s in t.shape[1:]:
        n *= int(s)
    return n


def all_reduce_gradients(
    parameters: Iterable[torch.Tensor], group: ProcessGroup | None = None
) -> int:
    """Sum every parameter's ``.grad`` over the ranks, in one all-reduce per dtype.

    A parameter no rank has a gradient for keeps ``grad = None`` (so optimizers skip it as a
    single process would); one that some rank lacks counts zeros there. Returns the bytes
    each rank contributed.
    """
    params = [p for p in parameters if p.requires_grad]
    by_dtype: dict[str, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(str(p.dtype), []).append(p)
    sent = 0
    backend = dist.get_backend(group)
    for key in sorted(by_dtype):  # the same order on every rank
        group_params = by_dtype[key]
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                for p in group_params
            ]
            + [
                torch.tensor(
                    [0.0 if p.grad is None else 1.0 for p in group_params],
                    dtype=group_params[0].dtype,
                )
            ]
        )
        if backend == "nccl":  # pragma: no cover - needs CUDA
            dev = flat.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(dev, op=dist.ReduceOp.SUM, group=group)
            flat = dev.cpu()
        else:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        sent += flat.numel() * flat.element_size()
        flags = flat[-len(group_params) :]
        offset = 0
        for p, has in zip(group_params, flags.tolist(), strict=True):
            n = p.numel()
            if has > 0:
                p.grad = flat[offset : offset + n].view_as(p).clone()
            else:
                p.grad = None
            offset += n
    return sent


def all_reduce_ints(values: Sequence[int], group: ProcessGroup | None = None) -> list[int]:
    """Sum small integers over the ranks (flags, counts): one all-reduce."""
    t = torch.tensor(list(values), dtype=torch.int64)
    if dist.get_backend(group) == "nccl":  # pragma: no cover - needs CUDA
        dev = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(dev, op=dist.ReduceOp.SUM, group=group)
        t = dev.cpu()
    else:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return [int(v) for v in t.tolist()]


def all_gather_json(obj: Any, group: ProcessGroup | None = None) -> list[Any]:
    """Every rank's ``obj`` in rank order, sent as JSON text (never pickle)."""
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
    world = dist.get_world_size(group)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64), group=group)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: len(data)] = data
    out = [torch.zeros(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(out, padded, group=group)
    return [
        json.loads(bytes(o[: int(s)].tolist()).decode()) for o, s in zip(out, sizes, strict=True)
    ]


@contextmanager
def single_process_group() -> Iterator[None]:
    """A world of one gloo rank for the length of the block (doctests, 1-rank tests)."""
    if dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory() as d:
        init = "file://" + os.path.join(d, "rendezvous")
        dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()
