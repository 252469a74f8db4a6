"""The partition merge's order depends on the records, not on when fetches arrive."""

from __future__ import annotations

import random

from pipeline.source.merge import PartitionMerge

Rec = tuple[tuple[str, int], int, int]  # (partition, offset, timestamp)


def records(seed: int) -> dict[tuple[str, int], list[tuple[int, int]]]:
    rng = random.Random(seed)
    out = {}
    for p in range(4):
        ts = 0
        out[("t", p)] = []
        for offset in range(rng.randint(0, 40)):
            ts += rng.choice([0, 0, 1, 3])  # ties across partitions are common
            out[("t", p)].append((offset, ts))
    return out


def merged(recs: dict[tuple[str, int], list[tuple[int, int]]], arrival_seed: int) -> list[Rec]:
    """Feed the records in a random arrival interleaving; the broker then says 'caught up'."""
    rng = random.Random(arrival_seed)
    merge: PartitionMerge[Rec] = PartitionMerge(recs, stall_ms=10**9)
    pending = {k: list(v) for k, v in recs.items()}
    for key in recs:
        merge.start_at(key, 0)
        if not recs[key]:  # the first fetch answers: nothing there
            merge.note_highwater(key, 0)
    out: list[Rec] = []
    while any(pending.values()):
        key = rng.choice([k for k, v in pending.items() if v])
        for _ in range(rng.randint(1, 5)):
            if pending[key]:
                offset, ts = pending[key].pop(0)
                merge.push(key, offset, ts, (key, offset, ts), now=0.0)
        if not pending[key]:
            merge.note_highwater(key, len(recs[key]))
        while (nxt := merge.pop(now=0.0)) is not None:
            out.append(nxt[0])
    return out


def test_any_arrival_order_gives_one_merge_order() -> None:
    for seed in range(30):
        recs = records(seed)
        first = merged(recs, 0)
        assert len(first) == sum(map(len, recs.values()))
        for arrival in range(1, 6):
            assert merged(recs, arrival) == first, (seed, arrival)
        # timestamp order, ties by partition rank, offset order within a partition
        assert first == sorted(first, key=lambda r: (r[2], r[0][1], r[1]))


def test_a_lagging_partition_is_waited_for_until_the_stall_bound() -> None:
    merge: PartitionMerge[str] = PartitionMerge([("t", 0), ("t", 1)], stall_ms=100)
    merge.push(("t", 0), 0, 5, "a", now=0.0)
    assert merge.pop(now=0.05) is None  # p1 not heard from: it may hold an earlier record
    assert merge.pop(now=0.1) == ("a", ("t", 0), 0)  # stalled 100 ms: go on without it


def test_an_empty_caught_up_partition_does_not_block() -> None:
    merge: PartitionMerge[str] = PartitionMerge([("t", 0), ("t", 1)], stall_ms=10**9)
    merge.start_at(("t", 1), 7)
    merge.note_highwater(("t", 1), 7)  # nothing there
    merge.push(("t", 0), 0, 5, "a", now=0.0)
    assert merge.pop(now=0.0) == ("a", ("t", 0), 0)
    merge.reset(("t", 1), 7, now=0.0)  # sought again: its high watermark is not known now
    merge.push(("t", 0), 1, 6, "b", now=0.0)
    assert merge.pop(now=0.0) is None
