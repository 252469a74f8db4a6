"""``freshet demo`` / ``make demo``: the whole main job on a built-in synthetic stream.

Starts the embedded Kafka broker on a free loopback port, replays a synthetic card-fraud
stream into it (with a few deliberately malformed events), trains the fraud model of
``configs/fraud.yaml`` online from the topic, shows a live progress line (events/s,
prequential AUC, hot-tier hit ratio, dead letters), and ends with a summary and a PNG of
AUC and throughput over time. No external data and no other service is needed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from tqdm import tqdm

from configs.job import JobConfig
from pipeline.broker.embedded import EmbeddedBroker, ensure_topics
from pipeline.events.generators import generate
from pipeline.events.replay import replay
from pipeline.training.job import Progress, TrainJob

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "fraud.yaml"

_MALFORMED: tuple[bytes, ...] = (
    b"{not json",
    b"",
    b'{"transaction_id": 1}',
    b'{"transaction_id": "x", "timestamp": "2024-01-01T00:00:00+00:00", "customer_id": 1,'
    b' "terminal_id": 2, "amount": 3.0, "label": 0}',
    b'{"transaction_id": 1, "timestamp": "2024-01-01T00:00:00+00:00", "customer_id": 1,'
    b' "terminal_id": 2, "amount": 1e300, "label": 0}',
    b'{"transaction_id": 1, "timestamp": "2024-01-01T00:00:00+00:00", "customer_id": 1,'
    b' "terminal_id": 2, "amount": 3.0, "label": 0, "colour": "red"}',
)


def _stream(n: int, seed: int, bad_every: int) -> Iterator[Any]:
    rng = random.Random(seed)
    for i, event in enumerate(generate("transaction", n, seed)):
        if bad_every and i % bad_every == bad_every - 1:
            yield rng.choice(_MALFORMED)
        yield event


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the demo."""
    parser.add_argument("--events", type=int, default=120_000, help="synthetic events to replay")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="job YAML to train")
    parser.add_argument("--out", default="demo-out", help="directory for summary.json and PNG")
    parser.add_argument("--bad-every", type=int, default=500, help="one malformed event per N")
    parser.add_argument("--seed", type=int, default=7, help="generator seed")
    parser.add_argument("--partitions", type=int, default=2, help="partitions of the topic")


def run(args: argparse.Namespace) -> int:
    """Run the demo end to end; returns 0 on success."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = JobConfig.from_yaml(args.config)
    n_bad = args.events // args.bad_every if args.bad_every else 0
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        topic = base.source.topic
        ensure_topics(broker.bootstrap, {topic: args.partitions})
        print(f"broker: {broker.bootstrap}  topic: {topic} ({args.partitions} partitions)")
        config = base.model_copy(
            update={
                "source": base.source.model_copy(
                    update={"bootstrap_servers": [broker.bootstrap], "group_id": "freshet-demo"}
                ),
                "store": base.store.model_copy(update={"path": os.path.join(tmp, "store")}),
            }
        )
        total = args.events + n_bad
        producer = threading.Thread(
            target=replay,
            args=(broker.bootstrap, topic, _stream(args.events, args.seed, args.bad_every)),
            kwargs={"progress": False, "total": total},
            daemon=True,
        )
        producer.start()
        bar = tqdm(total=args.events, unit="ev", desc="training", dynamic_ncols=True)
        seen = itertools.count()
        last = [0]

        def show(p: Progress) -> None:
            bar.update(p.events - last[0])
            last[0] = p.events
            next(seen)
            bar.set_postfix_str(
                f"{p.events_per_s:,.0f} ev/s  AUC {p.auc:.3f} (window {p.window_auc:.3f})  "
                f"hit {p.hit_ratio:.3f}  dead letters {p.dead_letters}"
            )

        with TrainJob(config.to_spec(), progress=show) as job:
            summary = job.run(max_events=args.events, idle_timeout_s=60.0)
        bar.update(summary.events - last[0])
        bar.close()
        producer.join(timeout=30)
    result = {
        "events_trained": summary.events,
        "malformed_sent": n_bad,
        "dead_letters": summary.dead_letters,
        "seconds": round(summary.seconds, 2),
        "events_per_s": round(summary.events_per_s, 1),
        "prequential_auc": round(summary.auc, 4),
        "prequential_log_loss": round(summary.log_loss, 4),
        "hot_tier_hit_ratio": round(summary.hit_ratio, 4),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    _plot(summary.history, out / "demo.png")
    print(json.dumps(result, indent=2))
    print(f"wrote {out / 'summary.json'} and {out / 'demo.png'}")
    ok = summary.events == args.events and summary.dead_letters == n_bad
    if not ok:
        print("demo: not every event was trained or dead-lettered as expected")
    return 0 if ok else 1


def _plot(history: list[Any], path: Path) -> None:
    fig = Figure(figsize=(11, 4))  # no pyplot: no GUI backend, nothing global to close
    ax1, ax2 = fig.subplots(1, 2)
    events = [p.events for p in history]
    ax1.plot(events, [p.auc for p in history], label="cumulative AUC")
    ax1.plot(events, [p.window_auc for p in history], label="sliding-window AUC")
    ax1.set_xlabel("events trained")
    ax1.set_ylabel("prequential AUC")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot([p.elapsed_s for p in history], [p.events_per_s for p in history])
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("events/s (mean so far)")
    ax2.grid(alpha=0.3)
    fig.suptitle("Freshet demo: online fraud model trained from Kafka")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
