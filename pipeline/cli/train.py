"""``freshet train --config FILE [--nproc N]``: the job on 1..N ranks, until stopped or done.

One rank runs here. ``--nproc N`` starts N ranks on this machine
(:func:`pipeline.training.launch.launch`), each ``python -m pipeline.cli.rank``
with the same job file and flags; under torchrun each rank runs that module itself. Every
rank builds the same job from the spec (``JobConfig.to_spec()``) and wires the same plugins::

    spec.operators ─► ScheduledOperators   migration / expiry on the rank's store;
                                            checkpoints (N ranks: rank 0 decides, all write)
    spec.publish   ─► DeltaPublish          one version per publish, rows of every rank
    spec.metrics   ─► MetricsExporter       /metrics on metrics_port + rank

Exit codes: 0 done, 2 a bad config or flag (or N ranks over a 1-rank checkpoint directory),
3 the store's disk failed with ``store.on_disk_error: stop``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import asdict
from typing import Any, Final

from pydantic import ValidationError

from configs.embedservice import RemoteSection
from pipeline.cli.config import ConfigFileError, load_job
from pipeline.cli.dead_letters import summarise, top_reasons
from pipeline.cli.embed_serve import remote_sources
from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.errors import EmbedServiceError
from pipeline.embedservice.owner import OwnedTablesPublish
from pipeline.errors import ConfigError, StoreDiskError
from pipeline.publishing.operator import DeltaPublish
from pipeline.publishing.publisher import Publisher
from pipeline.source.kafka import dead_letter_topic_for
from pipeline.training.checkpoints import CheckpointLayoutError
from pipeline.training.exporter import MetricsExporter
from pipeline.training.job import Progress, TrainJob
from pipeline.training.job_operators import ScheduledOperators
from pipeline.training.launch import Node, launch
from pipeline.training.models import BatchLayout, model_tables
from pipeline.training.plugin import JobPlugin
from pipeline.training.routed import TableSource
from pipeline.training.spec import JobSpec
from pipeline.training.world import World

log = logging.getLogger(__name__)

DISK_FAILED: Final = 3
"""Exit code when RocksDB could not write and ``store.on_disk_error`` is ``stop``."""
DEAD_LETTERS: Final = 4
"""Exit code when a run read events but every one went to the dead-letter topic."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``freshet train`` (and of each rank of ``python -m pipeline.cli.rank``)."""
    parser.add_argument("--config", required=True, help="job YAML (configs/fraud.yaml, ...)")
    parser.add_argument(
        "--max-events",
        type=int,
        default=None,
        help="stop once the model has trained N events (all ranks, restored ones included)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="stop after S seconds without events on any rank (counted once partitions are "
        "assigned)",
    )
    parser.add_argument(
        "--nproc", type=int, default=1, help="ranks on this machine (torch.distributed, gloo)"
    )
    parser.add_argument(
        "--nnodes", type=int, default=1, help="machines in the job (one pod per rank on k8s)"
    )
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's place, 0..")
    parser.add_argument(
        "--master-addr", default="127.0.0.1", help="host of node 0 (the rendezvous)"
    )
    parser.add_argument(
        "--master-port", type=int, default=None, help="rendezvous port (fixed for --nnodes > 1)"
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="checkpoints here (default: operators.checkpoint.dir, else <store.path>/checkpoints)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="also checkpoint every N steps (the same step on every rank)",
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="accepted for compatibility: a job always resumes from its newest checkpoint",
    )


def rank_arguments(args: argparse.Namespace) -> list[str]:
    """The flags every rank gets (all but ``--config`` and ``--nproc``)."""
    out: list[str] = []
    if args.max_events is not None:
        out += ["--max-events", str(args.max_events)]
    if args.idle_timeout is not None:
        out += ["--idle-timeout", str(args.idle_timeout)]
    if args.checkpoint_dir is not None:
        out += ["--checkpoint-dir", args.checkpoint_dir]
    if args.checkpoint_every:
        out += ["--checkpoint-every", str(args.checkpoint_every)]
    return out


def load_spec(args: argparse.Namespace) -> JobSpec | str:
    """The job's spec with the flags applied, or the one-line reason it is invalid."""
    if args.checkpoint_every < 0:
        return f"--checkpoint-every must be >= 0, got {args.checkpoint_every}"
    if args.max_events is not None and args.max_events < 1:
        return f"--max-events must be >= 1, got {args.max_events}"
    try:
        spec: JobSpec = load_job(args.config).to_spec()  # one line per problem, no traceback
    except ConfigFileError as err:
        return f"invalid config {err}"
    except (OSError, ValidationError, ValueError) as err:
        return f"invalid config {args.config}: {err}"
    if args.checkpoint_dir is not None or args.checkpoint_every:
        spec = spec.with_checkpoints(args.checkpoint_dir, args.checkpoint_every)
    return spec


def plugins_for(spec: JobSpec) -> list[JobPlugin]:
    """The plugins the spec asks for: operators, publisher, metrics (in that order)."""
    plugins: list[JobPlugin] = []
    operators = None
    if spec.operators.schedules:
        operators = ScheduledOperators(spec.operators)
        plugins.append(operators)
    publish = None
    if spec.publish is not None:
        pub = spec.publish
        publisher = Publisher(
            pub.bootstrap,
            pub.settings.topic,
            pub.snapshot_dir,
            settings=pub.settings,
            signer=pub.signer,
            client_config=pub.client_config,
        )
        publish = DeltaPublish(publisher)
        plugins.append(publish)
    if spec.metrics is not None:
        plugins.append(MetricsExporter(spec.metrics, operators=operators, publisher=publish))
    return plugins


def remote_tables(
    spec: JobSpec, section: RemoteSection | None, world: World, plugins: list[JobPlugin]
) -> tuple[dict[str, TableSource], list[JobPlugin]] | str:
    """The job's ``remote:`` tables: frozen sources, and the plugins to run; or why not.

    A job owning tables gets the plugin that publishes them (wrapping the delta publisher,
    whose versions it follows). The reason is one line: the service unreachable, a table
    missing there or not in the model.
    """
    if section is None:
        return {}, plugins
    remote = section.to_spec()
    if world.distributed:
        return "remote: tables need a one-rank job (--nproc 1)"
    layout = BatchLayout.from_spec(spec.features)
    dims = {t.name: t.dim for t in model_tables(spec.model, layout)}
    unknown = sorted((set(remote.read_tables()) | set(remote.owned_tables())) - set(dims))
    if unknown:
        return f"remote: tables {unknown} are not model tables {sorted(dims)}"
    try:
        _, sources = remote_sources(remote, dims) if remote.read else (None, {})
    except EmbedServiceError as err:
        return f"remote: {err}"
    if remote.own:
        deltas = next((p for p in plugins if isinstance(p, DeltaPublish)), None)
        owner = OwnedTablesPublish(
            ServiceClient(list(remote.endpoints), remote.client),
            remote.writer,
            remote.owned_tables(),
            interval_s=remote.publish_interval_s,
            deltas=deltas,
        )
        plugins = [owner if p is deltas else p for p in plugins]
        if deltas is None:
            plugins.append(owner)
    return dict(sources), plugins


def run_rank(args: argparse.Namespace, world: World, extra: dict[str, Any] | None = None) -> int:
    """Run this rank of the job; rank 0 prints the summary as JSON. The exit status."""
    spec = load_spec(args)
    if isinstance(spec, str):
        print(f"freshet train: {spec}", file=sys.stderr)
        return 2

    def show(p: Progress) -> None:
        log.info(
            "events=%d events/s=%.0f auc=%.4f window_auc=%.4f hit=%.3f dead_letters=%d%s",
            p.events,
            p.events_per_s,
            p.auc,
            p.window_auc,
            p.hit_ratio,
            p.dead_letters,
            " (events: all ranks; metrics: rank 0)" if world.distributed else "",
        )

    plugins = plugins_for(spec)
    remote = remote_tables(spec, load_job(args.config).remote, world, plugins)
    if isinstance(remote, str):
        print(f"freshet train: {remote}", file=sys.stderr)
        return 2
    sources, plugins = remote
    job = TrainJob(
        spec,
        world=world,
        plugins=plugins,
        progress=show,
        progress_every_s=5.0,
        table_sources=sources,
    )

    def stop(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        job.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        with job:
            summary = job.run(max_events=args.max_events, idle_timeout_s=args.idle_timeout)
            mine = {"rank": world.rank, "events": summary.events, "batches": summary.batches}
            if world.distributed and job.shared_store is not None:
                stats = getattr(job.shared_store, "stats", None)
                mine.update(
                    a2a_bytes=getattr(stats, "bytes_sent", 0),
                    a2a_remote_bytes=getattr(stats, "bytes_remote", 0),
                    dense_bytes=getattr(job.shared_store, "dense_bytes", 0),
                )
            ranks = world.gather_json(mine)
            steps, run_events, version = (
                job.steps,
                job.run_events,
                job.store.version if job.store else 0,
            )
    except CheckpointLayoutError as err:
        print(f"freshet train: {err}", file=sys.stderr)
        return 2
    except StoreDiskError as err:
        print(f"freshet train: {err}", file=sys.stderr)
        return DISK_FAILED
    if world.rank == 0:
        out = {k: v for k, v in asdict(summary).items() if k != "history"}
        if world.distributed:
            out.update(
                events=run_events,
                steps=steps,
                world_size=world.size,
                ranks=ranks,
                events_per_s=run_events / summary.seconds if summary.seconds else 0.0,
                **(extra or {}),
            )
        out["version"] = version
        print(json.dumps(out, indent=2), flush=True)
        if run_events == 0 and summary.dead_letters > 0:
            return _only_dead_letters(spec, summary.dead_letters)
    return 0


def _only_dead_letters(spec: JobSpec, count: int) -> int:
    """Every event of the run was dead-lettered: say why (top reasons), exit ``DEAD_LETTERS``."""
    src = spec.source
    topic = dead_letter_topic_for(src.topic, src.dead_letter_topic)
    reasons = top_reasons(src.bootstrap_servers, topic, count, dict(src.client_config))
    print(
        f"freshet train: all {count} events went to the dead-letter topic {topic} (does the "
        f"stream match the schema?); top reasons: {summarise(reasons, count)}",
        file=sys.stderr,
    )
    return DEAD_LETTERS


def run(args: argparse.Namespace) -> int:
    """Train until done on ``--nproc`` ranks; prints the summary as JSON.

    Exit codes: 0 done, 2 a bad config, 3 the store's disk failed with
    ``store.on_disk_error: stop`` (the message names the directory, the OS error and the
    checkpoint a restart resumes from).
    """
    if args.nproc < 1:
        print(f"freshet train: --nproc must be >= 1, got {args.nproc}", file=sys.stderr)
        return 2
    if args.nproc > 1 or args.nnodes > 1:
        spec = load_spec(args)  # a bad file fails here, once, not in every rank
        if isinstance(spec, str):
            print(f"freshet train: {spec}", file=sys.stderr)
            return 2
        if load_job(args.config).remote is not None:
            print("freshet train: remote: tables need a one-rank job (--nproc 1)", file=sys.stderr)
            return 2
        try:
            node = Node(args.nnodes, args.node_rank, args.master_addr, args.master_port)
        except ConfigError as err:
            print(f"freshet train: {err}", file=sys.stderr)
            return 2
        return launch(args.config, args.nproc, rank_arguments(args), node=node)
    return run_rank(args, World.solo())
