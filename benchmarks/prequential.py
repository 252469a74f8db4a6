"""Prequential (test-then-train) evaluation on the shared Criteo and fraud streams.

Each stream is replayed in order, batch by batch: every batch is scored with the parameters
as they were before it, then trained on. The Freshet model (configs/<kind>.yaml ``model:``)
runs beside a plain logistic regression on the same hashed one-hot ids (``baseline:``), each
with its own featurizer and its own store (2 shards, in a temporary directory).

    .venv/bin/python -m benchmarks.prequential --out bench-out/prequential.json

prints and saves the JSON (per dataset: cumulative AUC and log loss of model and baseline,
events, events/s) and a PNG of windowed AUC along each stream beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from configs.features import load_model_spec
from embedding_store import EmbeddingStore, StoreConfig
from pipeline.features.featurizer import Featurizer
from pipeline.features.spec import FeatureSpec
from pipeline.training.models import BatchLayout, ModelSpec, build_model, model_tables
from pipeline.training.prequential import PrequentialMetrics
from pipeline.training.trainer import OnlineTrainer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    name: str
    config: Path
    batch_size: int
    window: int


CRITEO = Dataset("criteo", REPO / "configs" / "ctr.yaml", batch_size=64, window=500)
FRAUD = Dataset("fraud", REPO / "configs" / "fraud.yaml", batch_size=512, window=20_000)


def load_criteo(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Criteo TSV rows as ``ctr`` events (label, i1..i13 int|None, c1..c26 hex|None)."""
    events: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            ev: dict[str, Any] = {"label": int(cols[0])}
            for i in range(13):
                v = cols[1 + i]
                ev[f"i{i + 1}"] = int(v) if v else None
            for i in range(26):
                v = cols[14 + i]
                ev[f"c{i + 1}"] = v or None
            events.append(ev)
            if limit is not None and len(events) >= limit:
                break
    return events


def load_fraud(path: Path, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` simulated transactions as ``transaction`` events.

    TX_FRAUD is the label; TX_FRAUD_SCENARIO is dropped (never a feature); TX_DATETIME is UTC.
    """
    df = pd.read_csv(
        path,
        nrows=limit,
        usecols=[
            "TRANSACTION_ID",
            "TX_DATETIME",
            "CUSTOMER_ID",
            "TERMINAL_ID",
            "TX_AMOUNT",
            "TX_FRAUD",
        ],
    )
    out = pd.DataFrame(
        {
            "transaction_id": df["TRANSACTION_ID"].astype("int64"),
            "timestamp": df["TX_DATETIME"].str.replace(" ", "T", regex=False) + "+00:00",
            "customer_id": df["CUSTOMER_ID"].astype("int64"),
            "terminal_id": df["TERMINAL_ID"].astype("int64"),
            "amount": df["TX_AMOUNT"].astype("float64"),
            "label": df["TX_FRAUD"].astype("int64"),
        }
    )
    records: list[dict[str, Any]] = out.to_dict("records")
    return records


def run_stream(
    events: list[dict[str, Any]],
    features: FeatureSpec,
    model_spec: ModelSpec,
    batch_size: int,
    window: int,
    record_every: int,
) -> dict[str, Any]:
    """Replay ``events`` prequentially through one model; return its figures and curve."""
    layout = BatchLayout.from_spec(features)
    featurizer = Featurizer(features)
    metrics = PrequentialMetrics(window=window, record_every=record_every)
    with tempfile.TemporaryDirectory(prefix="freshet-preq-") as tmp:
        config = StoreConfig(tmp, model_tables(model_spec, layout), num_shards=2)
        with EmbeddingStore(config) as store:
            model = build_model(model_spec, layout, store)
            dense_opt = model_spec.dense_optimizer.build(model.parameters())
            trainer = OnlineTrainer(
                model, store, featurizer, dense_optimizer=dense_opt, metrics=metrics
            )
            t0 = time.perf_counter()
            for start in range(0, len(events), batch_size):
                trainer.train_batch(events[start : start + batch_size])
            wall = time.perf_counter() - t0
    return {
        "model": model_spec.kind,
        "auc": metrics.auc(),
        "log_loss": metrics.log_loss(),
        "final_window_auc": metrics.window_auc(),
        "events": metrics.events,
        "positive_rate": metrics.positive_rate(),
        "seconds": wall,
        "events_per_second": metrics.events / wall if wall > 0 else math.nan,
        "featurize_seconds": trainer.featurize_seconds,
        "curve": [[p.events, p.window_auc, p.auc] for p in metrics.curve],
    }


def evaluate(dataset: Dataset, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Model and baseline on one stream."""
    features = FeatureSpec.from_yaml(dataset.config)
    every = max(dataset.batch_size, len(events) // 200)
    out: dict[str, Any] = {
        "events": len(events),
        "batch_size": dataset.batch_size,
        "window": dataset.window,
        "config": str(dataset.config.name),
    }
    for role in ("model", "baseline"):
        spec = load_model_spec(dataset.config, role)
        torch.manual_seed(spec.seed)
        out[role] = run_stream(events, features, spec, dataset.batch_size, dataset.window, every)
        r = out[role]
        print(
            f"{dataset.name:7s} {role:8s} ({r['model']}): AUC {r['auc']:.4f}  "
            f"log loss {r['log_loss']:.4f}  {r['events']} events  "
            f"{r['events_per_second']:.0f} events/s",
            flush=True,
        )
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    """Windowed AUC along each stream, model beside baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("criteo", "fraud") if n in results]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        res = results[name]
        for role, style in (("model", "-"), ("baseline", "--")):
            curve = np.asarray(res[role]["curve"], dtype=np.float64).reshape(-1, 3)
            label = f"{role} ({res[role]['model']}), cumulative AUC {res[role]['auc']:.3f}"
            ax.plot(curve[:, 0], curve[:, 1], style, label=label)
        ax.set_title(f"{name}: AUC over the last {res['window']} events")
        ax.set_xlabel("events seen")
        ax.set_ylabel("windowed AUC")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: OUT with .png)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data directory")
    parser.add_argument("--fraud-events", type=int, default=300_000, help="fraud stream length")
    parser.add_argument("--datasets", default="criteo,fraud", help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    wanted = set(args.datasets.split(","))
    if "criteo" in wanted:
        results["criteo"] = evaluate(CRITEO, load_criteo(args.data / "criteo" / "train.txt"))
    if "fraud" in wanted:
        events = load_fraud(args.data / "fraud" / "transactions.csv.gz", args.fraud_events)
        results["fraud"] = evaluate(FRAUD, events)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        name: {
            "events": res["events"],
            **{
                f"{role}_{k}": res[role][k]
                for role in ("model", "baseline")
                for k in ("auc", "log_loss", "events_per_second")
            },
        }
        for name, res in results.items()
    }
    args.out.write_text(json.dumps({"summary": summary, "results": results}, indent=2))
    png = args.plot or args.out.with_suffix(".png")
    plot(results, png)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
