"""Synthetic streams: schema, determinism, fraud rate, Zipf skew, drift."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from datetime import datetime, timedelta

import numpy as np
import pytest

from pipeline.errors import UnknownEventKindError
from pipeline.events.generators import CtrSimulation, generate, generate_ctr
from pipeline.events.kinds import decode


def top_share(values: list[int], fraction: float) -> float:
    counts = sorted(Counter(values).values(), reverse=True)
    k = max(1, int(len(counts) * fraction))
    return sum(counts[:k]) / len(values)


@pytest.mark.parametrize("kind", ["ctr", "transaction"])
def test_deterministic_in_seed_and_valid_events(kind: str) -> None:
    a = list(generate(kind, 300, seed=3))
    b = list(generate(kind, 300, seed=3))
    c = list(generate(kind, 300, seed=4))
    assert a == b
    assert a != c
    assert len(a) == 300
    for ev in a[:50]:
        decoded = decode(kind, json.dumps(ev).encode())  # the Kafka side's strict schema
        assert decoded.label == ev["label"]


def test_transactions_in_time_order_with_utc_timestamps() -> None:
    events = list(generate("transaction", 30_000, seed=0))
    times = [datetime.fromisoformat(e["timestamp"]) for e in events]
    assert {t.utcoffset() for t in times} == {timedelta(0)}
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert (times[-1] - times[0]).days >= 2  # ~9.6k transactions a day
    assert [e["transaction_id"] for e in events] == list(range(30_000))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fraud_rate_is_about_one_percent(seed: int) -> None:
    labels = np.array([e["label"] for e in generate("transaction", 60_000, seed=seed)])
    assert 0.004 <= labels.mean() <= 0.025


def test_fraud_patterns() -> None:
    events = list(generate("transaction", 100_000, seed=0))
    amounts = np.array([e["amount"] for e in events])
    labels = np.array([e["label"] for e in events])
    # amount anomalies: every amount over 220 is fraud
    assert (amounts > 220).any() and labels[amounts > 220].all()
    # compromised terminals: every transaction there is fraud, for days
    by_terminal: dict[int, list[int]] = {}
    for e in events:
        by_terminal.setdefault(e["terminal_id"], []).append(e["label"])
    compromised = [t for t, ys in by_terminal.items() if len(ys) >= 10 and np.mean(ys) == 1.0]
    assert len(compromised) >= 3
    # most frauds hide among ordinary amounts; stolen cards inflate theirs, so on average
    # a fraud is much larger than a legitimate transaction
    assert ((labels == 1) & (amounts <= 220)).sum() > 0.5 * labels.sum()
    assert amounts[labels == 1].mean() > 1.8 * amounts[labels == 0].mean()


def test_ids_are_zipf_skewed() -> None:
    events = list(generate("transaction", 60_000, seed=0))
    # uniform ids would put ~1% of transactions on the top 1% of ids
    assert top_share([e["terminal_id"] for e in events], 0.01) > 0.2
    assert top_share([e["customer_id"] for e in events], 0.01) > 0.15
    ads = list(generate("ctr", 20_000, seed=0))
    for field in ("c1", "c5", "c20"):
        values = [hash(e[field]) for e in ads if e[field] is not None]
        if len(set(values)) > 200:
            assert top_share(values, 0.01) > 0.2


def test_ctr_layout_and_click_rate() -> None:
    ads = list(generate("ctr", 10_000, seed=1))
    hexes = re.compile(r"^[0-9a-f]{8}$")
    assert all(
        e[f"c{i}"] is None or hexes.match(e[f"c{i}"]) for e in ads[:500] for i in range(1, 27)
    )
    assert all(
        e[f"i{i}"] is None or isinstance(e[f"i{i}"], int) for e in ads[:500] for i in range(1, 14)
    )
    assert any(e[f"c{i}"] is None for e in ads for i in range(1, 27))
    assert 0.1 <= np.mean([e["label"] for e in ads]) <= 0.4


def test_ctr_popularity_drifts() -> None:
    def new_share(drift: float) -> float:
        sim = CtrSimulation(chunk=4096, drift_per_chunk=drift)
        ads = list(generate_ctr(8 * 4096, seed=2, sim=sim))
        first = {e["c3"] for e in ads[:4096]}
        last = [e["c3"] for e in ads[-4096:]]
        return sum(v not in first for v in last) / len(last)

    assert new_share(0.1) > new_share(0.0) + 0.05


def test_unknown_kind() -> None:
    with pytest.raises(UnknownEventKindError, match="transaction"):
        generate("clicks", 1, seed=0)
