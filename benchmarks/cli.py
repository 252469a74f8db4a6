"""``freshet bench BENCHMARK [--quick] --out FILE.json``: run one benchmark, save JSON + PNG.

Benchmarks register in ``BENCHMARKS`` (name -> module, help); each module has
``add_arguments(parser)`` and ``run(args) -> int``, so later ones (``pipeline``, ``serve``)
add one line here. ``python -m benchmarks.cli BENCHMARK ...`` runs one without the rest of
the ``freshet`` command line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

BENCHMARKS: dict[str, tuple[str, str]] = {
    "store": ("benchmarks.store_bench", "tiered vs all-DRAM vs EmbeddingBag vs naive RocksDB"),
    "sweep": ("benchmarks.sweep", "throughput and hit ratio over DRAM budgets and Zipf exponents"),
    "memory": ("benchmarks.memory", "DRAM bytes per hot row against the row's raw bytes"),
    "pipeline": ("benchmarks.pipeline_bench", "events/s from Kafka vs store-only, time split"),
    "serve": ("benchmarks.serve_bench", "replica throughput, latency, freshness, delta bytes"),
    "scaling": ("benchmarks.scaling_bench", "samples/s with 1 and 2 ranks, all-to-all bytes"),
    "checkpoint": ("benchmarks.checkpoint_bench", "incremental vs full checkpoint, restore"),
    "drift": ("benchmarks.drift_bench", "hit ratio on a drifting stream, with/without migration"),
    "operators": ("benchmarks.operators_bench", "training with operators on schedule vs without"),
    "batches": ("benchmarks.batch_size_bench", "events/s and fixed cost per batch, by batch size"),
    "quality": (
        "benchmarks.quality_bench",
        "prequential AUC and events/s beside River, per stream",
    ),
    "soak": ("benchmarks.soak", "long run, every operator on a 2-5 s schedule: RSS, fds, chains"),
    "embed-service": ("benchmarks.embed_service_bench", "service lookups vs local, replica RSS"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register every benchmark as a sub-command of ``freshet bench``."""
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--quick", action="store_true", help="small and fast (under a minute)")
        p.add_argument("--out", required=True, help="result JSON path (a PNG is written beside)")
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_bench_module=module)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark; 0 on success (targets missed still exit 0), 1 on failure."""
    mod = importlib.import_module(args._bench_module)
    code: int = mod.run(args)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.cli BENCHMARK ...`` (the same as ``freshet bench ...``)."""
    parser = argparse.ArgumentParser(prog="freshet bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
