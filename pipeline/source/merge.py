"""The deterministic order in which a source merges its partitions into batches.

With one partition a batch that closes on size is fixed by the start offset and the records.
With several, the order in which the broker's fetches happen to return the partitions would
decide which records share a batch, so a job restarted from a checkpoint would form other
batches than the uninterrupted job and end with another model. :class:`PartitionMerge` makes
the merged order a function of the per-partition start offsets (what a checkpoint stores) and
the records alone:

- **Order**: records leave in ``(timestamp_ms, partition rank, offset)`` order, where the rank
  is the partition's place in the sorted ``(topic, partition)`` list; within a partition this
  is offset order whatever the timestamps (it is a merge of the partitions' heads, not a sort).
- **Waiting**: a record leaves only when every other partition either has a record fetched
  (its head is compared) or is *idle*. A partition is idle when its buffer is empty and

  1. the broker said at its last fetch that it has nothing more (fetch position >= high
     watermark): the caught-up case, deterministic over a backlog (a replay, or a job catching
     up after a crash), since the high watermark is then final; or
  2. it has stayed empty for ``stall_ms`` although the broker reported more records (or no
     fetch answered yet): the escape that keeps one stuck partition from stopping the others.

::

    p0 [ (t=5,o=10) (t=9,o=11) ]            emit order, given the lanes on the left:
    p1 [ ]  caught up (idle)     ──merge──►   p0@10 (t=5), p2@3 (t=7), p0@11 (t=9), p2@4 (t=9)
    p2 [ (t=7,o=3) (t=9,o=4) ]              (t=9 tie: p0 before p2, the lower rank)

Trade-off (the ``max.task.idle.ms`` of Kafka Streams): over records that are all on the broker
the merge is exact, so batches that close on size (``max_events``) are the same in every run
and across restarts. On a live stream, a partition that is caught up is skipped without
waiting, and a batch still closes ``max_wait_ms`` after its first event: then which records
share a batch depends on when they arrived, as it does with one partition. Waiting for an
idle partition instead would make every batch wait ``stall_ms`` for a partition that gets no
traffic (latency), and waiting without bound would stop training on an empty partition.

>>> m = PartitionMerge([("t", 1), ("t", 0)], stall_ms=1000)
>>> for p, o, ts in [(0, 10, 5), (0, 11, 9), (1, 3, 7)]:
...     m.push(("t", p), o, ts, f"p{p}@{o}", now=0.0)
>>> m.pop(now=0.0)             # every partition has a head: the earliest leaves
('p0@10', ('t', 0), 10)
>>> m.pop(now=0.0), m.pop(now=0.0)   # then p1 is empty, and not known to be caught up
(('p1@3', ('t', 1), 3), None)
>>> m.note_highwater(("t", 1), 4)   # p1 is caught up: p0's last record may leave
>>> m.pop(now=0.0)
('p0@11', ('t', 0), 11)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["PartitionMerge"]

T = TypeVar("T")
Key = tuple[str, int]


@dataclass
class _Lane(Generic[T]):
    """What is fetched but not merged yet from one partition."""

    rank: int
    items: deque[tuple[int, int, T]] = field(default_factory=deque)  # (offset, ts, item)
    next_offset: int | None = None  # after the last record fetched
    highwater: int | None = None  # as the broker last reported it
    empty_since: float = 0.0

    def idle(self, now: float, stall_s: float) -> bool:
        if self.items:
            return False
        caught_up = (
            self.highwater is not None
            and self.next_offset is not None
            and self.next_offset >= self.highwater
        )
        return caught_up or now - self.empty_since >= stall_s


class PartitionMerge(Generic[T]):
    """Per-partition FIFOs of fetched records, merged in a deterministic order (module doc)."""

    def __init__(self, partitions: Iterable[Key] = (), *, stall_ms: float) -> None:
        self._stall_s = stall_ms / 1000.0
        self._lanes: dict[Key, _Lane[T]] = {}
        self.assign(partitions, now=0.0)

    def assign(self, partitions: Iterable[Key], now: float) -> None:
        """Merge exactly ``partitions``: new ones get an empty lane, others are dropped."""
        wanted = sorted(set(partitions))
        if wanted == sorted(self._lanes):
            return
        old = self._lanes
        self._lanes = {}
        for rank, key in enumerate(wanted):
            lane = old.get(key) or _Lane[T](rank=rank, empty_since=now)
            lane.rank = rank
            self._lanes[key] = lane

    @property
    def partitions(self) -> list[Key]:
        """The merged partitions, in rank order."""
        return list(self._lanes)

    def reset(self, key: Key, next_offset: int | None, now: float) -> None:
        """Forget what is buffered for ``key`` (it was sought elsewhere)."""
        lane = self._lanes.get(key)
        if lane is not None:
            lane.items.clear()
            lane.next_offset = next_offset
            lane.highwater = None
            lane.empty_since = now

    def start_at(self, key: Key, offset: int) -> None:
        """Record where ``key`` starts reading, before any record of it was fetched."""
        lane = self._lanes.get(key)
        if lane is not None and lane.next_offset is None:
            lane.next_offset = offset

    def push(self, key: Key, offset: int, timestamp_ms: int, item: T, now: float) -> None:
        """Append a fetched record of partition ``key`` (in offset order)."""
        lane = self._lanes.get(key)
        if lane is None:  # fetched from a partition assigned since the last assign()
            self.assign([*self._lanes, key], now)
            lane = self._lanes[key]
        lane.items.append((offset, timestamp_ms, item))
        lane.next_offset = offset + 1

    def note_highwater(self, key: Key, highwater: int | None) -> None:
        """The broker's last reported high watermark of ``key`` (``None``: not known)."""
        lane = self._lanes.get(key)
        if lane is not None and highwater is not None:
            lane.highwater = highwater

    def buffered(self, key: Key) -> int:
        """Records of ``key`` fetched and not merged yet."""
        lane = self._lanes.get(key)
        return len(lane.items) if lane is not None else 0

    def __len__(self) -> int:
        return sum(len(lane.items) for lane in self._lanes.values())

    def pop(self, now: float) -> tuple[T, Key, int] | None:
        """The next record in merge order, or ``None`` if a partition must be waited for."""
        best: tuple[int, int, int] | None = None
        best_key: Key | None = None
        for key, lane in self._lanes.items():
            if lane.items:
                offset, ts, _ = lane.items[0]
                order = (ts, lane.rank, offset)
                if best is None or order < best:
                    best, best_key = order, key
            elif not lane.idle(now, self._stall_s):
                return None  # it may still hold a record that goes first
        if best_key is None:
            return None
        lane = self._lanes[best_key]
        offset, _, item = lane.items.popleft()
        if not lane.items:
            lane.empty_since = now
        return item, best_key, offset
