"""Synthetic event streams with realistic structure, generated in vectorised chunks.

``generate("ctr", n, seed)`` yields Criteo-layout impressions; ``generate("transaction", n,
seed)`` yields card transactions in time order. Both are deterministic in ``seed``.

::

    ctr          26 categorical fields, each a Zipf-ranked vocabulary (sizes 10 .. 200k)
                 whose items are replaced over time (popularity drift: new ads, new sites);
                 13 log-normal counts; the click depends on hidden per-item effects, on the
                 counts and on one pairwise interaction (c1 x c2); ~22% clicks.
    transaction  customers with Zipf activity and their own amount profile and favourite
                 terminals; terminal popularity drifts day by day; frauds (~1%):
                   amount anomalies: rare large amounts (> 220) are fraud;
                   compromised terminals: every transaction there for 28 days;
                   compromised customers: a third of their transactions for 14 days,
                   with the amount multiplied by 5.

>>> events = list(generate("transaction", 3, seed=1))
>>> sorted(events[0])
['amount', 'customer_id', 'label', 'terminal_id', 'timestamp', 'transaction_id']
>>> events[0]["timestamp"] <= events[1]["timestamp"], events[0]["timestamp"][-6:]
(True, '+00:00')
>>> ad = next(generate("ctr", 1, seed=1))
>>> len(ad), ad["label"] in (0, 1), ad["c1"] is None or len(ad["c1"]) == 8
(40, True, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from embedding_store.initializers import splitmix64
from pipeline.errors import UnknownEventKindError

__all__ = ["CtrSimulation", "TransactionSimulation", "generate", "zipf_sampler"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
KINDS: Final = ("ctr", "transaction")
_HEX: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def zipf_sampler(size: int, exponent: float, rng: np.random.Generator) -> tuple[F64, I64]:
    """Cumulative probabilities of Zipf ranks ``1..size`` and a random rank -> item permutation.

    Draw items with ``perm[np.searchsorted(cdf, rng.random(n))]``.
    """
    weights = np.arange(1, size + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    perm = rng.permutation(size).astype(np.int64)
    return cdf, perm


def _draw(cdf: F64, rng: np.random.Generator, n: int) -> I64:
    out: I64 = np.minimum(np.searchsorted(cdf, rng.random(n)), len(cdf) - 1).astype(np.int64)
    return out


def hex8(x: U64) -> list[str]:
    """Low 32 bits of each value as 8 lowercase hex digits (vectorised).

    >>> hex8(np.array([0x68FD1E64, 255], dtype=np.uint64))
    ['68fd1e64', '000000ff']
    """
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    nibbles = ((x[:, None] >> shifts[None, :]) & np.uint64(0xF)).astype(np.intp)
    chars = np.ascontiguousarray(_HEX[nibbles])
    out: list[str] = chars.view("S8").ravel().astype("U8").tolist()
    return out


def _rows(columns: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    keys = list(columns)
    for row in zip(*columns.values(), strict=True):
        yield dict(zip(keys, row, strict=True))


@dataclass(frozen=True)
class CtrSimulation:
    """Knobs of the click stream."""

    chunk: int = 8192
    drift_per_chunk: float = 0.02
    zipf_exponent: float = 1.1
    base_ctr_logit: float = -1.6


@dataclass(frozen=True)
class TransactionSimulation:
    """Knobs of the card-transaction stream (defaults follow the Fraud Detection Handbook)."""

    customers: int = 5000
    terminals: int = 10000
    transactions_per_day: float = 9600.0
    start: datetime = datetime(2018, 4, 1, tzinfo=UTC)
    zipf_exponent: float = 0.9
    favourite_terminals: int = 8
    favourite_share: float = 0.8
    terminal_drift_per_day: float = 0.02
    large_amount: float = 220.0
    large_amount_rate: float = 0.0008
    compromised_terminals_per_day: int = 3
    terminal_days: int = 28
    compromised_customers_per_day: int = 4
    customer_days: int = 14
    customer_fraud_share: float = 1 / 3
    customer_amount_factor: float = 5.0


def generate_ctr(n: int, seed: int, sim: CtrSimulation | None = None) -> Iterator[dict[str, Any]]:
    """Criteo-layout impressions: ``label``, ``i1..i13`` (int | None), ``c1..c26`` (hex | None)."""
    sim = sim or CtrSimulation()
    rng = np.random.default_rng(seed)
    vocab = np.round(np.exp(rng.uniform(np.log(10), np.log(200_000), 26))).astype(np.int64)
    missing_c = np.where(rng.random(26) < 0.3, rng.uniform(0.05, 0.45, 26), 0.0)
    samplers = [zipf_sampler(int(v), sim.zipf_exponent, rng) for v in vocab]
    generation = [np.zeros(int(v), dtype=np.uint64) for v in vocab]
    effect_scale = rng.uniform(0.2, 0.8, 26)
    salts = splitmix64(np.arange(26, dtype=np.uint64) + np.uint64(seed << 8))
    mu_i = rng.uniform(0.0, 5.0, 13)
    sigma_i = rng.uniform(0.5, 2.0, 13)
    missing_i = rng.uniform(0.0, 0.4, 13)
    weight_i = rng.normal(0.0, 0.25, 13)
    done = 0
    while done < n:
        m = min(sim.chunk, n - done)
        logit = np.full(m, sim.base_ctr_logit)
        columns: dict[str, list[Any]] = {}
        ints: dict[str, list[Any]] = {}
        for j in range(13):
            x = np.floor(np.exp(rng.normal(mu_i[j], sigma_i[j], m)) - 1).astype(np.int64)
            miss = rng.random(m) < missing_i[j]
            z = (np.log1p(np.maximum(x, 0)) - mu_i[j]) / sigma_i[j]
            logit += np.where(miss, 0.0, weight_i[j] * z)
            counts = x.astype(object)
            counts[miss] = None
            ints[f"i{j + 1}"] = counts.tolist()
        item_ids: list[U64] = []
        for f in range(26):
            cdf, perm = samplers[f]
            generation[f][rng.random(len(perm)) < sim.drift_per_chunk] += np.uint64(1)
            rank = _draw(cdf, rng, m)
            item = perm[rank].astype(np.uint64)
            with np.errstate(over="ignore"):
                h = splitmix64(item ^ (generation[f][rank] << np.uint64(40)) ^ salts[f])
            item_ids.append(h)
            u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0
            miss = rng.random(m) < missing_c[f]
            logit += np.where(miss, 0.0, effect_scale[f] * u)
            text = np.asarray(hex8(h), dtype=object)
            text[miss] = None
            columns[f"c{f + 1}"] = text.tolist()
        with np.errstate(over="ignore"):
            pair = splitmix64(item_ids[0] ^ (item_ids[1] * np.uint64(31)))
        logit += 0.8 * ((pair >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2 - 1)
        label = (rng.random(m) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
        yield from _rows({"label": label.tolist(), **ints, **columns})
        done += m


def generate_transactions(
    n: int, seed: int, sim: TransactionSimulation | None = None
) -> Iterator[dict[str, Any]]:
    """Card transactions in time order, one simulated day per chunk (see the module docstring)."""
    sim = sim or TransactionSimulation()
    rng = np.random.default_rng(seed)
    nc, nt = sim.customers, sim.terminals
    cust_cdf, cust_perm = zipf_sampler(nc, sim.zipf_exponent, rng)
    term_cdf, term_perm = zipf_sampler(nt, sim.zipf_exponent, rng)
    mean_amount = rng.uniform(5.0, 100.0, nc)
    favourites = term_perm[_draw(term_cdf, rng, nc * sim.favourite_terminals)].reshape(nc, -1)
    hour_weights = 1.0 + 0.8 * np.sin((np.arange(24) - 9) / 24 * 2 * np.pi)
    hour_cdf = np.cumsum(hour_weights) / hour_weights.sum()
    start = sim.start.timestamp()
    # compromise state as of a process already running, so the fraud rate is steady from day 0
    term_until = np.full(nt, -np.inf)
    cust_until = np.full(nc, -np.inf)
    for back in range(1, sim.terminal_days):
        hit = rng.integers(0, nt, sim.compromised_terminals_per_day)
        term_until[hit] = start + (sim.terminal_days - back) * 86400.0
    for back in range(1, sim.customer_days):
        hit = rng.integers(0, nc, sim.compromised_customers_per_day)
        cust_until[hit] = start + (sim.customer_days - back) * 86400.0
    done, day = 0, 0
    while done < n:
        day_start = start + day * 86400.0
        term_until[rng.integers(0, nt, sim.compromised_terminals_per_day)] = (
            day_start + sim.terminal_days * 86400.0
        )
        cust_until[rng.integers(0, nc, sim.compromised_customers_per_day)] = (
            day_start + sim.customer_days * 86400.0
        )
        drift = rng.random(nt) < sim.terminal_drift_per_day
        moved = np.flatnonzero(drift)
        term_perm[moved] = term_perm[rng.permutation(moved)]
        m = min(int(rng.poisson(sim.transactions_per_day)), n - done)
        hours = _draw(hour_cdf, rng, m)
        t = np.sort(day_start + hours * 3600.0 + rng.random(m) * 3600.0)
        cust = cust_perm[_draw(cust_cdf, rng, m)]
        fav = rng.random(m) < sim.favourite_share
        term = np.where(
            fav,
            favourites[cust, rng.integers(0, sim.favourite_terminals, m)],
            term_perm[_draw(term_cdf, rng, m)],
        )
        mu = mean_amount[cust]
        amount = np.abs(rng.normal(mu, mu / 2.0))
        anomaly = rng.random(m) < sim.large_amount_rate
        amount = np.where(anomaly, rng.uniform(sim.large_amount, 5 * sim.large_amount, m), amount)
        fraud = amount > sim.large_amount
        fraud |= t < term_until[term]
        stolen = (t < cust_until[cust]) & (rng.random(m) < sim.customer_fraud_share)
        amount = np.where(stolen, amount * sim.customer_amount_factor, amount)
        fraud |= stolen
        secs = np.floor(t).astype("datetime64[s]")
        stamps = np.char.add(np.datetime_as_string(secs, unit="s"), "+00:00")
        yield from _rows(
            {
                "transaction_id": list(range(done, done + m)),
                "timestamp": stamps.tolist(),
                "customer_id": cust.tolist(),
                "terminal_id": term.tolist(),
                "amount": np.round(np.maximum(amount, 0.01), 2).tolist(),
                "label": fraud.astype(np.int64).tolist(),
            }
        )
        done += m
        day += 1


def generate(kind: str, n: int, seed: int) -> Iterator[dict[str, Any]]:
    """``n`` events of ``kind`` ("ctr" or "transaction"), deterministic in ``seed``."""
    if kind == "ctr":
        return generate_ctr(n, seed)
    if kind == "transaction":
        return generate_transactions(n, seed)
    raise UnknownEventKindError(kind, list(KINDS))
