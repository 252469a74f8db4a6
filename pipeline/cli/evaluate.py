r"""``freshet evaluate --config JOB.yaml --file DATA``: prequential quality of a job, no broker.

Every record of the file is validated as the source would (the job's schema, the same
:class:`~pipeline.events.fast_decode.FastDecoder`), cut into batches of ``source.max_events``
(or ``--batch-size``), and each batch is scored with the parameters as they were before it,
then trained on: the same featurizer, model, store and trainer as ``freshet train``, only
fed from a file. Prints (and with ``--out`` writes) the cumulative AUC and log loss, events/s
and the dead letters' top reasons; draws the windowed AUC along the stream as a PNG.

Examples::

    freshet evaluate --config configs/ctr.yaml --file ../shared/data/criteo/train.txt
    freshet evaluate --config configs/fraud.yaml \
        --file ../shared/data/fraud/transactions.csv.gz --limit 300000 --out fraud.json
    freshet evaluate --config my-job.yaml --file clicks.csv.gz    # CSV/TSV/JSONL, gzip ok

Exit codes: 0 done, 2 a bad config or file, 4 no event was valid.

::

    file ──► messages (csv/tsv cells typed by the schema) ──► FastDecoder ──► batches
                                                  │ DecodeError                 │
                                                  ▼                             ▼
                                        dead letters (counted)   OnlineTrainer.train_batch
                                                                  (score, then train)
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from embedding_store import EmbeddingStore, StoreConfig
from pipeline.cli.config import ConfigFileError, load_job
from pipeline.errors import PipelineError
from pipeline.events.fast_decode import FastDecoder
from pipeline.events.formats import FileFormat, detect_format, read_messages
from pipeline.features.featurizer import Featurizer
from pipeline.training.models import BatchLayout, build_model, model_tables
from pipeline.training.prequential import PrequentialMetrics
from pipeline.training.trainer import OnlineTrainer

NO_EVENTS: Final = 4
"""Exit code when no record of the file was a valid event."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``freshet evaluate``."""
    parser.add_argument("--config", required=True, type=Path, help="job YAML")
    parser.add_argument("--file", required=True, type=Path, help="CSV/TSV/JSONL/Criteo (.gz ok)")
    parser.add_argument("--format", default=None, help="file format (default: from the name)")
    parser.add_argument("--limit", type=int, default=None, help="first N records only")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="events per batch (default: source.max_events)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument(
        "--plot", type=Path, default=None, help="PNG of the windowed AUC (default: OUT.png)"
    )
    parser.add_argument("--store", type=Path, default=None, help="store dir (default: a temp one)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")


def messages(config: Any, path: Path, fmt: str | None = None) -> Iterator[bytes]:
    """The file's records as the JSON messages a producer would send for this job."""
    schema = config.schema_spec()
    form = FileFormat(fmt) if fmt else detect_format(path)
    builtin = form in (FileFormat.CRITEO, FileFormat.FRAUD_CSV)
    if builtin and schema.name in ("ctr", "transaction"):
        return read_messages(path, form)  # the built-in layouts' own readers
    if form is FileFormat.CRITEO and path.suffix.lower().removesuffix(".gz") != ".txt":
        form = FileFormat.TSV  # a .tsv with a header, for a declared schema
    return read_messages(path, form, schema)


def evaluate(
    config: Any,
    path: Path,
    *,
    fmt: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    store_dir: Path | None = None,
) -> dict[str, Any]:
    """Prequential run of ``config`` over ``path``: figures, curve and dead letters."""
    schema = config.schema_spec()
    decode = FastDecoder(config.event_kind, schema)
    size = batch_size or config.source.max_events
    fspec = config.features.to_spec()
    mspec = config.model.to_spec()
    layout = BatchLayout.from_spec(fspec)
    overrides = config.store.table_overrides()
    tables = tuple(replace(t, **overrides) for t in model_tables(mspec, layout))
    reasons: collections.Counter[str] = collections.Counter()
    dead = 0
    window = config.training.auc_window
    with tempfile.TemporaryDirectory(prefix="freshet-evaluate-") as tmp:
        where = str(store_dir) if store_dir is not None else tmp
        store_config = StoreConfig(
            where,
            tables,
            num_shards=config.store.num_shards,
            lfu_decay=config.store.lfu_decay,
            **config.store.rocks_options(),
        )
        with EmbeddingStore(store_config) as store:
            torch.manual_seed(mspec.seed)
            model = build_model(mspec, layout, store)
            metrics = PrequentialMetrics(window=window, record_every=max(size, 256))
            trainer = OnlineTrainer(
                model,
                store,
                Featurizer(fspec),
                dense_optimizer=mspec.dense_optimizer.build(model.parameters()),
                metrics=metrics,
            )
            batch: list[Any] = []
            read = 0
            t0 = time.perf_counter()
            decode_s = 0.0
            for message in messages(config, path, fmt):
                if limit is not None and read >= limit:
                    break
                read += 1
                d0 = time.perf_counter()
                try:
                    batch.append(decode(message))
                except ValueError as err:  # DecodeError: what the source dead-letters
                    dead += 1
                    reasons[str(err)] += 1
                decode_s += time.perf_counter() - d0
                if len(batch) == size:
                    trainer.train_batch(tuple(batch))
                    batch = []
            if batch:
                trainer.train_batch(tuple(batch))
            wall = time.perf_counter() - t0
    events = metrics.events
    return {
        "config": str(getattr(config, "_path", "")) or None,
        "file": str(path),
        "kind": config.event_kind,
        "model": mspec.kind,
        "batch_size": size,
        "records": read,
        "events": events,
        "dead_letters": dead,
        "top_reasons": reasons.most_common(5),
        "auc": metrics.auc(),
        "log_loss": metrics.log_loss(),
        "window": window,
        "final_window_auc": metrics.window_auc(),
        "positive_rate": metrics.positive_rate(),
        "seconds": wall,
        "train_seconds": trainer.seconds,
        "decode_seconds": decode_s,
        "events_per_second": events / wall if wall > 0 else math.nan,
        "train_events_per_second": trainer.events_per_second,
        "curve": [[p.events, p.window_auc, p.auc] for p in metrics.curve],
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Windowed AUC along the stream, one line per result."""
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(7, 4))
    for res in results:
        curve = np.asarray(res["curve"], dtype=np.float64).reshape(-1, 3)
        label = f"{res['kind']} {res['model']} b={res['batch_size']}: AUC {res['auc']:.4f}"
        ax.plot(curve[:, 0], curve[:, 1], label=label)
    ax.set_xlabel("events seen")
    ax.set_ylabel(f"AUC over the last {results[0]['window']} events")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Evaluate; print one summary line (and the JSON with ``--out``)."""
    try:
        config = load_job(args.config, secrets=False)
    except ConfigFileError as err:
        print(f"freshet evaluate: invalid config {err}", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"freshet evaluate: no such file: {args.file}", file=sys.stderr)
        return 2
    if (args.batch_size is not None and args.batch_size < 1) or (
        args.limit is not None and args.limit < 0
    ):
        print("freshet evaluate: --batch-size must be >= 1 and --limit >= 0", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        result = evaluate(
            config,
            args.file,
            fmt=args.format,
            limit=args.limit,
            batch_size=args.batch_size,
            store_dir=args.store,
        )
    except PipelineError as err:  # a file that cannot be read in its format
        print(f"freshet evaluate: {err}", file=sys.stderr)
        return 2
    result["config"] = str(args.config)
    print(
        f"{args.file.name}: {result['events']} events, AUC {result['auc']:.4f}, "
        f"log loss {result['log_loss']:.4f}, {result['events_per_second']:.0f} events/s, "
        f"{result['dead_letters']} dead letters"
    )
    for reason, n in result["top_reasons"]:
        print(f"  dead letters: {n} x {reason}", file=sys.stderr)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    png = args.plot or (args.out.with_suffix(".png") if args.out is not None else None)
    if png is not None and result["events"]:
        plot([result], png)
    if result["events"] == 0:
        print("freshet evaluate: no valid event in the file", file=sys.stderr)
        return NO_EVENTS
    return 0
