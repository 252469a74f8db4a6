"""Scaling benchmark: samples/s of the distributed store with 1 and 2 ranks on one machine.

Each rank is a process (gloo over 127.0.0.1) training its own in-process synthetic batches
(Zipf ids, no Kafka) through a DistributedEmbeddingBag and the benchmark MLP; rows are owned
by id hash, ids/rows/gradients move by all-to-all, dense gradients by all-reduce::

    world 1:  rank 0: batch B ─► lookup (all-to-all with itself) ─► MLP ─► step
    world 2:  rank 0: batch B ─┐ ids ⇄ rows, grads ─► owners (all_to_all_single, gloo)
              rank 1: batch B ─┘ dense grads all_reduce(SUM)
    weak scaling: B per rank (global batch grows); strong: the same global batch, B/N each

Reported per run: total samples/s (global samples / slowest rank's time) and, per rank,
samples/s, median step time, all-to-all calls, bytes (all and remote) and seconds per step,
dense all-reduce bytes per step. The JSON says how many cores the machine has and that all
ranks share them: on a 2-core machine two ranks split the same two cores, so the figures
measure the cost of the exchange rather than a speed-up from more hardware.

``python -m benchmarks.scaling_bench --out scaling.json`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the scaling benchmark (``--quick`` and ``--out`` come from the caller)."""
    parser.add_argument("--ids", type=int, default=1_000_000, help="id space")
    parser.add_argument("--batch", type=int, default=1024, help="samples per rank per step")
    parser.add_argument("--features", type=int, default=26, help="ids per sample")
    parser.add_argument("--dim", type=int, default=32, help="embedding dim")
    parser.add_argument("--alpha", type=float, default=1.05, help="Zipf exponent")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 60)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10)")
    parser.add_argument("--ranks", default="1,2", help="world sizes to run, comma-separated")
    parser.add_argument(
        "--modes", default="weak,strong", help="weak (batch per rank) and/or strong (global)"
    )
    parser.add_argument("--scratch", default=None, help="directory for the stores")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, spec: dict[str, Any], out: str) -> None:
    """One rank: build the store and model, train warmup + timed steps, write its JSON."""
    import torch
    import torch.distributed as dist

    from benchmarks.model import DenseTower, dense_optimizer
    from benchmarks.workload import ZipfSampler
    from embedding_store import OptimizerConfig, StoreConfig, TableConfig
    from embedding_store.distributed import DistributedEmbeddingBag, DistributedStore

    torch.set_num_threads(int(spec["threads"]))
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        batch, feats, steps, warmup = spec["batch"], spec["features"], spec["steps"], spec["warmup"]
        sampler = ZipfSampler(spec["ids"], spec["alpha"], seed=20240501)
        rng = np.random.default_rng(1000 + rank)
        total = steps + warmup
        ids = sampler.sample(rng, total * batch * feats).reshape(total, batch, feats)
        labels = (ids[:, :, 0] % 3 == 0).astype(np.float32)
        table = TableConfig(
            "ids", spec["dim"], OptimizerConfig("rowwise_adagrad", lr=0.05), init_scale=0.01
        )
        cfg = StoreConfig(os.path.join(spec["scratch"], f"w{world}-{spec['mode']}"), (table,), 2)
        with DistributedStore(cfg) as store:
            bag = DistributedEmbeddingBag(store, "ids")
            tower = DenseTower(feats, spec["dim"])
            opt = dense_optimizer(tower)
            params = list(tower.parameters())
            times: list[float] = []
            for i in range(total):
                if i == warmup:
                    dist.barrier()
                    before, dense_before = store.stats.copy(), store.dense_bytes
                    t_start = time.perf_counter()
                t0 = time.perf_counter()
                emb = bag(torch.from_numpy(np.ascontiguousarray(ids[i])))
                logits = tower(emb)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, torch.from_numpy(labels[i]), reduction="sum"
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                store.sync_dense_gradients(params)
                opt.step()
                store.step()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            seconds = time.perf_counter() - t_start
            comm = store.stats.since(before)
            dense_bytes = store.dense_bytes - dense_before
            rows = sum(len(i) for i, _ in store.export_rows("ids"))
        result = {
            "rank": rank,
            "seconds": seconds,
            "samples": steps * batch,
            "samples_per_s": steps * batch / seconds,
            "step_ms_median": 1000 * statistics.median(times),
            "step_ms_p90": 1000 * float(np.percentile(times, 90)),
            "a2a_calls_per_step": comm.calls / steps,
            "a2a_bytes_per_step": comm.bytes_sent / steps,
            "a2a_remote_bytes_per_step": comm.bytes_remote / steps,
            "a2a_seconds_per_step": comm.seconds / steps,
            "a2a_share_of_step": comm.seconds / seconds,
            "dense_allreduce_bytes_per_step": dense_bytes / steps,
            "rows_owned": rows,
            "torch_threads": torch.get_num_threads(),
        }
        Path(out, f"rank-{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_world(world: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``world`` ranks on ``spec``; returns the run's totals and per-rank figures."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            _rank_main,
            args=(world, _free_port(), spec, out),
            nprocs=world,
            start_method="spawn",
        )
        ranks = [json.loads(Path(out, f"rank-{r}.json").read_text()) for r in range(world)]
    slowest = max(r["seconds"] for r in ranks)
    samples = sum(r["samples"] for r in ranks)
    return {
        "world_size": world,
        "mode": spec["mode"],
        "batch_per_rank": spec["batch"],
        "global_batch": spec["batch"] * world,
        "samples_per_s": samples / slowest,
        "a2a_bytes_per_step": sum(r["a2a_bytes_per_step"] for r in ranks),
        "a2a_remote_bytes_per_step": sum(r["a2a_remote_bytes_per_step"] for r in ranks),
        "per_rank": ranks,
    }


def run_scaling(args: argparse.Namespace) -> dict[str, Any]:
    """Every (mode, world size) run of the benchmark, as one JSON-able result."""
    from benchmarks.machine import machine_info

    quick = bool(getattr(args, "quick", False))
    steps = args.steps if args.steps is not None else (15 if quick else 60)
    warmup = args.warmup if args.warmup is not None else (3 if quick else 10)
    worlds = [int(w) for w in str(args.ranks).split(",") if w]
    modes = [m for m in str(args.modes).split(",") if m]
    cores = os.cpu_count() or 1
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for mode in modes:
            for world in worlds:
                if mode == "strong" and world == 1 and "weak" in modes:
                    continue  # the same run as weak at world 1
                per_rank = args.batch if mode == "weak" else max(1, args.batch // world)
                spec = {
                    "ids": args.ids,
                    "batch": per_rank,
                    "features": args.features,
                    "dim": args.dim,
                    "alpha": args.alpha,
                    "steps": steps,
                    "warmup": warmup,
                    "mode": mode,
                    "scratch": scratch,
                    "threads": max(1, cores // world),
                }
                log.info("scaling: %s, %d rank(s), batch %d per rank", mode, world, per_rank)
                runs.append(run_world(world, spec))
    base = next((r for r in runs if r["world_size"] == 1), None)
    for r in runs:
        r["speedup_vs_1_rank"] = r["samples_per_s"] / base["samples_per_s"] if base else None
    return {
        "benchmark": "scaling",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine_info(),
        "cores": cores,
        "note": (
            f"All ranks run on this one machine with {cores} CPU cores, shared by every rank "
            "(and by whatever else runs here; see machine.load_average). Each rank gets "
            "cores/world torch threads, so 2 ranks split the same cores 1 rank uses: the "
            "2-rank figures show what the all-to-all exchange costs, not a speed-up from "
            "more hardware. Gloo over loopback TCP; no Kafka (batches are generated in-process "
            "before timing); every row in DRAM."
        ),
        "workload": {
            "ids": args.ids,
            "batch_per_rank_weak": args.batch,
            "features": args.features,
            "dim": args.dim,
            "alpha": args.alpha,
            "steps": steps,
            "warmup": warmup,
            "model": f"DistributedEmbeddingBag + MLP {args.features * args.dim}-256-128-1, "
            "row-wise Adagrad rows, Adam dense, loss summed",
        },
        "runs": runs,
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the runs."""
    lines = [
        f"scaling on {result['cores']} cores shared by all ranks "
        f"({result['workload']['features']} ids x dim {result['workload']['dim']}, "
        f"{result['workload']['ids']:,} ids)",
        f"{'mode':6} {'ranks':>5} {'batch/rank':>10} {'samples/s':>10} {'vs 1':>6} "
        f"{'a2a MB/step':>11} {'remote MB':>9} {'a2a ms':>7} {'step ms':>8}",
    ]
    for r in result["runs"]:
        ranks = r["per_rank"]
        lines.append(
            f"{r['mode']:6} {r['world_size']:>5} {r['batch_per_rank']:>10} "
            f"{r['samples_per_s']:>10,.0f} {r['speedup_vs_1_rank'] or 0:>6.2f} "
            f"{r['a2a_bytes_per_step'] / 1e6:>11.2f} {r['a2a_remote_bytes_per_step'] / 1e6:>9.2f} "
            f"{1000 * max(x['a2a_seconds_per_step'] for x in ranks):>7.1f} "
            f"{max(x['step_ms_median'] for x in ranks):>8.1f}"
        )
        for x in ranks:
            lines.append(
                f"{'':6} {'rank ' + str(x['rank']):>5} {'':>10} {x['samples_per_s']:>10,.0f} "
                f"{'':>6} {x['a2a_bytes_per_step'] / 1e6:>11.2f} "
                f"{x['a2a_remote_bytes_per_step'] / 1e6:>9.2f} "
                f"{1000 * x['a2a_seconds_per_step']:>7.1f} {x['step_ms_median']:>8.1f}"
            )
    lines.append(result["note"])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run, print the table, save the JSON to ``args.out``."""
    result = run_scaling(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"saved {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.scaling_bench --out FILE.json [--quick] ...``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling_bench")
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--out", default="bench-out/scaling.json", help="result JSON")
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
