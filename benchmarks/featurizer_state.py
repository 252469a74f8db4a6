"""Featurizer state under a stream of ever new entities (issue 21 #4): budget and delta bytes.

``python -m benchmarks.featurizer_state --entities 1000000 --budget-mb 64`` runs the fraud
job's feature spec (``configs/fraud.yaml``: 9 window aggregates, 4 of them per customer) over
synthetic transactions whose customer ids are all new (terminals from a fixed set of 10,000),
in batches of ``--batch`` events, in this process. It records:

- RSS (``/proc/self/status`` VmRSS) before the stream, after 20 batches, at its peak and at
  the end, and the featurizer's own array bytes (``Featurizer.state_nbytes``). Target: RSS
  growth from the start <= 1.1 x the configured budget (without a budget every customer
  costs ~1.7 KB in its 4 aggregates, for ever).
- Every ``--checkpoint-every`` batches, a real checkpoint on disk (a
  :class:`~operators.checkpoint.manager.CheckpointManager` under a temporary directory, the
  featurizer as its patch source, as a 1-rank job writes it; the store holds no rows): the
  first full, then increments. Per checkpoint: the customers and terminals its featurizer
  layer carries, the bytes of its dense file (the featurizer layer and nothing else here),
  and a full checkpoint's at the end. Target: an increment's bytes follow the entities
  changed, not those kept.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from configs.job import JobConfig
from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from operators.checkpoint.dense_state import DENSE_FILE
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.patches import PATCH_PREFIX
from operators.checkpoint.reader import CheckpointReader
from pipeline.features.featurizer import Featurizer
from pipeline.features.state_budget import StateBudget
from pipeline.training.featurizer_patches import FeaturizerPatches

REPO = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def events(start: int, n: int, rng: np.random.Generator, t0: float) -> list[dict[str, object]]:
    customers = np.arange(start, start + n)
    terminals = rng.integers(0, 10_000, n)
    amounts = rng.lognormal(3.0, 1.0, n)
    times = t0 + (customers - start) * 0.5
    return [
        {
            "customer_id": int(c),
            "terminal_id": int(t),
            "amount": float(a),
            "label": int(a > 200),
            "timestamp": float(s),
        }
        for c, t, a, s in zip(customers, terminals, amounts, times, strict=True)
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--budget-mb", type=float, default=64.0)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--checkpoint-every", type=int, default=10)
    args = ap.parse_args(argv)
    spec = JobConfig.from_yaml(REPO / "configs" / "fraud.yaml").features.to_spec()
    spec_t = spec
    budget = StateBudget(budget_bytes=int(args.budget_mb * (1 << 20)))
    feat = Featurizer(spec_t, budget)
    rng = np.random.default_rng(0)
    t0 = 1.5e9
    done, batches, warm_rss, warm_state = 0, 0, 0, 0
    deltas: list[dict[str, int]] = []
    checkpoints = args.checkpoint_every <= args.entities // args.batch
    tmp = tempfile.TemporaryDirectory(prefix="featurizer-state-")
    store = EmbeddingStore(StoreConfig(tmp.name + "/store", (TableConfig("t", 1),), 1)).open()
    manager = CheckpointManager(tmp.name + "/ckpt", retention=1, patches=FeaturizerPatches(feat))
    warm = Featurizer(spec_t, budget)  # imports, allocator pools: not the state measured
    warm.transform(events(-args.batch, args.batch, rng, t0 - args.batch))
    del warm
    start_rss, peak_rss = rss_bytes(), 0
    started = time.perf_counter()
    while done < args.entities:
        n = min(args.batch, args.entities - done)
        batch = events(done, n, rng, t0 + done * 0.5)
        feat.transform(batch)
        store.end_step()  # a training step: checkpoints are taken at step boundaries
        done += n
        batches += 1
        peak_rss = max(peak_rss, rss_bytes())
        if batches == 20:
            warm_rss, warm_state = rss_bytes(), feat.state_nbytes()
        if checkpoints and batches % args.checkpoint_every == 0:
            has_base = manager.has_base(store)
            info = (manager.write_incremental if has_base else manager.write_full)(store)
            reader = CheckpointReader(manager.root, info)
            layer = reader.dense()
            changed = len(layer[f"{PATCH_PREFIX}0000/agg.cust_30d.keys"].array)
            terminals = len(layer[f"{PATCH_PREFIX}0000/agg.term_7d.keys"].array)
            deltas.append(
                {
                    "events": done,
                    "kind": info.kind.value,
                    "customers_in_layer": changed,
                    "terminals_in_layer": terminals,
                    "dense_file_bytes": os.path.getsize(os.path.join(reader.path, DENSE_FILE)),
                    "checkpoint_bytes": info.bytes,
                    "state_bytes": feat.state_nbytes(),
                }
            )
            del layer
    whole = 0
    if checkpoints:  # what every checkpoint wrote before: the whole state, as a full one now
        info = manager.write_full(store)
        whole = os.path.getsize(os.path.join(CheckpointReader(manager.root, info).path, DENSE_FILE))
    manager.close()
    store.close()
    tmp.cleanup()
    end_rss = rss_bytes()
    out = {
        "entities": args.entities,
        "budget_bytes": budget.budget_bytes,
        "seconds": round(time.perf_counter() - started, 1),
        "rss_start": start_rss,
        "rss_after_warmup": warm_rss,
        "rss_end": end_rss,
        "rss_peak": peak_rss,
        "rss_growth": end_rss - start_rss,
        "rss_growth_over_budget": round((end_rss - start_rss) / (budget.budget_bytes or 1), 3),
        "rss_peak_growth_over_budget": round(
            (peak_rss - start_rss) / (budget.budget_bytes or 1), 3
        ),
        "state_bytes_warmup": warm_state,
        "state_bytes_end": feat.state_nbytes(),
        "customers_kept": len(feat.state_dict()["agg.cust_30d.keys"]),
        "checkpoints": deltas[:1] + deltas[-3:],
        "full_checkpoint_bytes_at_end": whole,
        "incremental_bytes_per_changed_customer": round(
            float(
                np.median(
                    [
                        d["dense_file_bytes"] / max(1, d["customers_in_layer"])
                        for d in deltas
                        if d["kind"] == "incremental"
                    ]
                )
            )
            if len(deltas) > 1
            else 0.0,
            1,
        ),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
