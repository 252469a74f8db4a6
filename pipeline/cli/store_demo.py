"""The store-only demo: a drifting Zipf click stream trained through the tiered store.

Used by ``freshet demo --store-only`` (and by ``make demo`` until the Kafka pipeline is wired
in): no broker, just the store, a small DLRM-style model and a progress bar.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from embedding_store import (
    EmbeddingStore,
    OptimizerConfig,
    StoreConfig,
    StoreEmbeddingBag,
    TableConfig,
)
from pipeline.events.generators import zipf_sampler


@dataclass(frozen=True)
class StoreDemoSummary:
    """What the store demo prints at the end."""

    steps: int
    samples: int
    samples_per_s: float
    hit_ratio: float
    hot_rows: int
    cold_rows: int
    prefetch_stall_s: float
    final_logloss: float


def _zipf_batches(
    rng: np.random.Generator, steps: int, batch: int, features: int, vocab: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    cdf, perm = zipf_sampler(vocab, 1.05, rng)
    true_w = rng.normal(0, 1, vocab).astype(np.float32)
    out = []
    for step in range(steps):
        r = np.searchsorted(cdf, rng.random(batch * features))
        drift = (step * vocab // (4 * steps)) % vocab  # popular ids drift over time
        ids = perm[(r + drift) % vocab].reshape(batch, features).astype(np.int64)
        logit = true_w[ids].sum(axis=1) / np.sqrt(features)
        y = (rng.random(batch) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        out.append((ids, y))
    return out


def run_store_demo(
    steps: int = 300, batch: int = 1024, vocab: int = 500_000, path: str | None = None
) -> StoreDemoSummary:
    """Train a small model on a synthetic stream through a tiered store; returns the summary."""
    rng = np.random.default_rng(0)
    features, dim = 8, 16
    data = _zipf_batches(rng, steps, batch, features, vocab)
    tmp = tempfile.TemporaryDirectory() if path is None else None
    root = path or (tmp.name if tmp else ".")
    table = TableConfig(
        "ids", dim, OptimizerConfig("rowwise_adagrad", lr=0.05), hot_rows=vocab // 20
    )
    model = nn.Sequential(nn.Linear(features * dim, 64), nn.ReLU(), nn.Linear(64, 1))
    dense_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses: list[float] = []
    with EmbeddingStore(StoreConfig(root, (table,), num_shards=4)) as store:
        bag = StoreEmbeddingBag(store, "ids")
        t0 = time.perf_counter()
        ticket = store.prefetch([{"ids": data[0][0].ravel()}])
        bar = tqdm(range(steps), desc="training", unit="batch")
        for i in bar:
            ahead = store.prefetch([{"ids": data[i + 1][0].ravel()}]) if i + 1 < steps else None
            ticket.wait()
            ids, y = data[i]
            logits = model(bag(torch.from_numpy(ids)).reshape(batch, -1)).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y))
            dense_opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            dense_opt.step()
            store.step()
            ticket.release()
            if ahead is not None:
                ticket = ahead
            losses.append(loss.item())
            if i % 10 == 0:
                stats = store.stats("ids")
                bar.set_postfix(
                    samples_s=f"{(i + 1) * batch / (time.perf_counter() - t0):,.0f}",
                    hit=f"{stats.hit_ratio:.3f}",
                    hot=stats.hot_rows,
                    loss=f"{np.mean(losses[-10:]):.4f}",
                )
        elapsed = time.perf_counter() - t0
        store.flush()
        stats = store.stats("ids", count_cold=True)
        summary = StoreDemoSummary(
            steps=steps,
            samples=steps * batch,
            samples_per_s=steps * batch / elapsed,
            hit_ratio=stats.hit_ratio,
            hot_rows=stats.hot_rows,
            cold_rows=stats.cold_rows or 0,
            prefetch_stall_s=store.prefetch_stall_seconds,
            final_logloss=float(np.mean(losses[-20:])),
        )
    if tmp is not None:
        tmp.cleanup()
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the store demo."""
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--batch", type=int, default=1024, help="samples per step")
    parser.add_argument("--vocab", type=int, default=500_000, help="distinct ids")


def run(args: argparse.Namespace) -> int:
    """Run the store demo and print its summary as JSON."""
    summary = run_store_demo(args.steps, args.batch, args.vocab)
    print(json.dumps(asdict(summary), indent=2))
    return 0
