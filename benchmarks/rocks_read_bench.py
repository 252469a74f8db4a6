"""Cold-tier micro-benchmark: CPU per key of a RocksDB multi-get, per row of a write-back.

::

    build (once per layout): import a row for each of N ids (store.import_rows, as the store
      benchmark pre-warms), compact, write K batches of random rows each flushed to its own
      L0 file, then leave M rows in the memtables (what recent write-backs leave above the
      last level: each spans the whole key range)
    rounds x configurations, interleaved step by step: the same sorted ~10k Zipf-tail ids
      per step (a batch's unique ids outside the hot set, as the prefetch thread reads
      them), split by shard, RocksTier.get per shard; CPU seconds of this thread / keys
    write-back: RocksTier.put of 10k random rows into a scratch store, CPU per row
    eviction: ShardTable.start_eviction over a hot tier of H rows, CPU per call

A layout is an ``SstConfig`` (block size, compression, Bloom filters, data-block hash
index), with or without the memtables' filter or mmap reads; a read path is ``legacy`` (the
code before the cold tier was vectorised: a Python loop per key and row, default read
options), ``get`` (``RocksTier.get``), ``nocsum`` / ``nofill`` (no checksum check / no block
cache fill), ``raw`` / ``raw_getitem`` (only the rocksdict call, ``get`` or ``[]``),
``shuffled`` (unsorted ids). Medians over rounds, the fastest round, and ratios to
``default/legacy`` (reads: of medians and the median of per-round ratios) or ``legacy``.
Results of 2026-11-23 are in ``benchmarks/results/2026-11-23/rocks_read-*.json``.
``python -m benchmarks.rocks_read_bench --out FILE.json [--ids N --rounds R --layouts ...]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rocksdict import Options, ReadOptions

from benchmarks.machine import run_header
from benchmarks.report import write_json
from benchmarks.systems.base import random_rows
from benchmarks.systems.freshet import TABLE, import_all_rows, table_config
from benchmarks.workload import Workload, ZipfSampler
from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from embedding_store.config import SstConfig
from embedding_store.rocks import RocksShard, RocksTier
from embedding_store.rows import RowLayout, encode_keys
from embedding_store.shard import ShardTable
from embedding_store.tier import RowBlock
from embedding_store.types import BoolArray, IdArray

log = logging.getLogger(__name__)

SHARDS = 4
BATCH_IDS = 4096 * 26  # ids in one batch of the store benchmark


@dataclass(frozen=True)
class Layout:
    """An SST layout; ``memtable_bloom=False`` drops the memtables' filter (kept with files');
    ``mmap_reads`` maps the files instead of reading them (pages read count in RSS)."""

    sst: SstConfig
    memtable_bloom: bool = True
    mmap_reads: bool = False


# what the cold tier looked like before it was tuned
BASELINE = SstConfig(block_size=4096, compression="snappy", bloom_bits_per_key=0)
BLOOM = replace(BASELINE, bloom_bits_per_key=10)
LAYOUTS: dict[str, Layout] = {
    "default": Layout(BASELINE),
    "nocomp": Layout(replace(BASELINE, compression="none")),
    "bs2k": Layout(replace(BASELINE, block_size=2048)),
    "bs1k": Layout(replace(BASELINE, block_size=1024)),
    "hash": Layout(replace(BASELINE, hash_index=True)),
    "bloom10_files": Layout(BLOOM, memtable_bloom=False),
    "bloom10": Layout(BLOOM),
    "bloom10_bs2k": Layout(replace(BLOOM, block_size=2048)),
    "bloom10_hash": Layout(replace(BLOOM, hash_index=True)),
    "tuned": Layout(SstConfig()),
    "tuned_mmap": Layout(SstConfig(), mmap_reads=True),
}
READS_ON_ALL = ("get",)
READS_ON_SOME = (
    "legacy",
    "get",
    "nocsum",
    "nofill",
    "nofill_nocsum",
    "async",
    "raw",
    "raw_getitem",
    "shuffled",
)
READ_DETAIL_LAYOUTS = ("default", "tuned")  # layouts read by every read path


# -- the code before the cold tier was vectorised (for the ratios) -------------------------
def legacy_encode_keys(ids: IdArray) -> list[bytes]:
    raw = np.asarray(ids, dtype=np.int64).astype(">i8").tobytes()
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]


def legacy_get(tier: RocksTier, ids: IdArray) -> tuple[BoolArray, RowBlock]:
    out = tier.layout.empty(len(ids))
    cf = tier._cf()
    keys = legacy_encode_keys(ids)
    values = tier.shard.call("multi-get", lambda: cf.get(keys))
    found = np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))
    if found.any():
        joined = b"".join([v for v in values if v is not None])
        out[found] = np.frombuffer(joined, dtype=tier.layout.dtype).copy()
    return found, out


def legacy_put(tier: RocksTier, ids: IdArray, rows: RowBlock) -> None:
    tier._cf()
    wb = tier.shard.batch(tier._cf_name)
    raw = np.ascontiguousarray(rows).tobytes()
    size = tier.layout.row_bytes
    values = [raw[i : i + size] for i in range(0, len(raw), size)]
    for k, v in zip(legacy_encode_keys(ids), values, strict=True):
        wb.put(k, v)
    tier.shard.write(wb)


def legacy_start_eviction(st: ShardTable, slack: float) -> int:
    with st.lock:
        over = st._over_budget(slack)
        if over <= 0:
            return 0
        live = st.hot.live_slots()
        cand = live[(st.hot.pins[live] == 0) & ~st.hot.evicting[live]]
        over -= int(st.hot.evicting[live].sum())
        n = min(over, len(cand))
        if n <= 0:
            return 0
        freq = st.effective_freq(cand)
        victims = cand[np.argpartition(freq, n - 1)[:n]] if n < len(cand) else cand
        st.hot.evicting[victims] = True
        return n


# -- building the stores --------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """What every layout's store holds and what is read from it."""

    ids: int
    dim: int
    hot_fraction: float
    l0_files: int
    l0_rows: int
    memtable_rows: int
    keys_per_step: int
    steps: int
    rounds: int
    seed: int


def open_store(path: Path, setup: Setup, layout: Layout) -> EmbeddingStore:
    table = table_config(setup.dim, None)
    store = EmbeddingStore(StoreConfig(str(path), (table,), num_shards=SHARDS, sst=layout.sst))
    if layout.memtable_bloom and not layout.mmap_reads:
        return store.open()
    plain = RocksShard._options

    def options(shard: RocksShard) -> Options:
        opts = plain(shard)
        if not layout.memtable_bloom:
            opts.set_memtable_prefix_bloom_ratio(0.0)
        if layout.mmap_reads:
            opts.set_allow_mmap_reads(True)
        return opts

    RocksShard._options = options  # type: ignore[method-assign]
    try:
        return store.open()
    finally:
        RocksShard._options = plain  # type: ignore[method-assign]


def random_block(layout: RowLayout, rng: np.random.Generator, n: int) -> RowBlock:
    rows = layout.empty(n)
    for name in ("version", "last_step", "last_time", "freq", "epoch"):
        rows[name] = 1
    rows["emb"] = random_rows(rng, n, layout.dim)
    rows["state"] = 0.0
    return rows


def build(path: Path, setup: Setup, layout: Layout) -> tuple[EmbeddingStore, dict[str, Any]]:
    """The open store of ``layout``: every id imported and compacted to the last level, then
    ``l0_files`` files of random rows (one flush each, spanning the key range), then
    ``memtable_rows`` random rows left in the memtables: what write-backs leave above it."""
    t0 = time.perf_counter()
    workload = Workload(num_ids=setup.ids, dim=setup.dim, seed=setup.seed)
    store = open_store(path, setup, layout)
    families = [shard.cf("t." + TABLE) for shard in store._shards]
    import_all_rows(store, workload)
    for cf in families:
        cf.flush(True)
        cf.compact_range(None, None)
    rng = np.random.default_rng(setup.seed + 7)
    rows_layout = RowLayout(setup.dim, store.config.table(TABLE).state_dim)
    for n, flush in [(setup.l0_rows, True)] * setup.l0_files + [(setup.memtable_rows, False)]:
        ids = np.unique(rng.integers(0, setup.ids, n, dtype=np.int64))
        store.import_rows(TABLE, ids, random_block(rows_layout, rng, len(ids)))
        if flush:
            for cf in families:
                cf.flush(True)
    store.truncate_write_log(store.version)
    return store, {"seconds": round(time.perf_counter() - t0, 1)}


def warm_page_cache(path: Path) -> None:
    """Read every file once, so the timed reads come from the page cache as in the bench."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 22):
                    pass


def shape(store: EmbeddingStore) -> dict[str, Any]:
    """Files per level, and RocksDB memory outside the block cache, over all shards."""
    levels = [0] * 7
    readers = 0
    for shard in store._shards:
        cf = shard.cf("t." + TABLE)
        for lvl in range(7):
            levels[lvl] += int(cf.property_value(f"rocksdb.num-files-at-level{lvl}") or 0)
        readers += int(cf.property_int_value("rocksdb.estimate-table-readers-mem") or 0)
    return {"files_per_level": levels, "table_readers_bytes": readers}


# -- key sets -------------------------------------------------------------------------------
def key_sets(setup: Setup, count: int, rng: np.random.Generator) -> list[IdArray]:
    """Sorted Zipf-tail ids: a batch's unique ids outside the hot set, ~keys_per_step each."""
    sampler = ZipfSampler(setup.ids, 1.05, setup.seed)
    hot = np.sort(sampler.ids_by_rank(int(setup.ids * setup.hot_fraction)))
    out = []
    while len(out) < count:
        ids = np.unique(sampler.sample(rng, BATCH_IDS))
        tail = ids[~np.isin(ids, hot, assume_unique=True)]
        out.append(np.sort(rng.permutation(tail)[: setup.keys_per_step]))
    return out


def rss_file_bytes() -> int:
    """File-backed resident memory of this process (mapped table files count here)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    return 0


def per_shard(store: EmbeddingStore, ids: IdArray) -> list[IdArray]:
    shard = store.shard_of(ids)
    return [ids[shard == i] for i in range(SHARDS)]


# -- reading --------------------------------------------------------------------------------
def reader(name: str) -> Callable[[RocksTier, IdArray], object]:
    """The read path ``name`` (see the module docstring)."""

    def with_options(tier: RocksTier, ids: IdArray, opts: ReadOptions) -> object:
        # a multi-get reads with its column family's options (rocksdict ignores a per-call
        # read_opt for a list of keys): set them on the column family for this call
        cf = tier._cf()
        cf.set_read_options(opts)
        try:
            return tier.get(ids)
        finally:
            cf.set_read_options(tier.shard.read_options)

    if name == "legacy":
        return legacy_get
    if name == "get":
        return RocksTier.get
    if name == "nocsum":
        opts = ReadOptions()
        opts.set_verify_checksums(False)
        return lambda t, ids: with_options(t, ids, opts)
    if name == "nofill":
        fill = ReadOptions()
        fill.fill_cache(False)
        return lambda t, ids: with_options(t, ids, fill)
    if name == "nofill_nocsum":
        both = ReadOptions()
        both.fill_cache(False)
        both.set_verify_checksums(False)
        return lambda t, ids: with_options(t, ids, both)
    if name == "async":
        aio = ReadOptions()
        aio.set_async_io(True)
        return lambda t, ids: with_options(t, ids, aio)
    if name == "raw":
        return lambda t, ids: t._cf().get(encode_keys(ids))
    if name == "raw_getitem":
        return lambda t, ids: t._cf()[encode_keys(ids)]
    if name == "shuffled":
        return lambda t, ids: t.get(np.random.default_rng(len(ids)).permutation(ids))
    raise ValueError(name)


def time_step(
    store: EmbeddingStore, read: Callable[[RocksTier, IdArray], object], parts: list[IdArray]
) -> float:
    """CPU seconds of this thread to read one step's ids, shard by shard."""
    tiers = [st.cold for st in store._shard_tables(TABLE)]
    t0 = time.thread_time()
    for tier, part in zip(tiers, parts, strict=True):
        read(tier, part)
    return time.thread_time() - t0


def check_reads(store: EmbeddingStore, ids: IdArray) -> None:
    """Every read path returns the same rows."""
    for tier, part in zip(
        [st.cold for st in store._shard_tables(TABLE)], per_shard(store, ids), strict=True
    ):
        want_found, want = legacy_get(tier, part)
        for name in ("get", "nocsum", "nofill", "nofill_nocsum", "async"):
            found, got = reader(name)(tier, part)  # type: ignore[misc]
            assert np.array_equal(found, want_found), name
            assert want.tobytes() == got.tobytes(), name


def run_reads(root: Path, setup: Setup, names: Sequence[str]) -> dict[str, Any]:
    layouts: dict[str, dict[str, Any]] = {}
    stores: dict[str, EmbeddingStore] = {}
    for name in names:
        layout = LAYOUTS[name]
        log.info("building %s (%s) ...", name, layout)
        stores[name], built = build(root / f"store-{name}", setup, layout)
        layouts[name] = {**asdict(layout), "build": built, **shape(stores[name])}
    for store in stores.values():
        warm_page_cache(Path(store.config.path))
    configs = [(lay, rd) for lay in names for rd in READS_ON_ALL]
    configs += [
        (lay, rd)
        for lay in READ_DETAIL_LAYOUTS
        for rd in READS_ON_SOME
        if lay in names and (lay, rd) not in configs
    ]
    rng = np.random.default_rng(setup.seed + 11)
    for store in stores.values():
        check_reads(store, key_sets(setup, 1, rng)[0])
    samples: dict[str, list[float]] = {f"{lay}/{rd}": [] for lay, rd in configs}
    rss_file_before = rss_file_bytes()
    order = list(configs)
    shuffle = random.Random(setup.seed)
    sharding = next(iter(stores.values()))  # every store shards ids alike
    for rnd in range(setup.rounds):
        cpu = dict.fromkeys(samples, 0.0)
        keys = 0
        for ids in key_sets(setup, setup.steps, rng):  # fresh ids each step, the same for all
            parts = per_shard(sharding, ids)
            keys += len(ids)
            shuffle.shuffle(order)  # configurations interleaved step by step
            for lay, rd in order:
                cpu[f"{lay}/{rd}"] += time_step(stores[lay], reader(rd), parts)
        for k, v in cpu.items():
            samples[k].append(v / keys * 1e6)
        log.info("round %d: %s", rnd, {k: round(v[-1], 2) for k, v in samples.items()})
    rss_file_after = rss_file_bytes()
    for store in stores.values():
        store.close()
    base = samples["default/legacy"]
    return {
        "layouts": layouts,
        "rss_file_bytes_before_reads": rss_file_before,
        "rss_file_bytes_after_reads": rss_file_after,
        "cpu_us_per_key": {
            k: {
                "median": round(statistics.median(v), 3),
                "min": round(min(v), 3),
                "rounds": [round(x, 3) for x in v],
                "ratio_to_default_legacy": round(statistics.median(v) / statistics.median(base), 3),
                "median_of_round_ratios": round(
                    statistics.median(x / b for x, b in zip(v, base, strict=True)), 3
                ),
            }
            for k, v in samples.items()
        },
    }


# -- writing --------------------------------------------------------------------------------
def run_writes(root: Path, setup: Setup, rows_per_call: int = 10_000) -> dict[str, Any]:
    """CPU per row of a write-back batch (this thread: encoding, the batch, the memtable)."""
    rng = np.random.default_rng(setup.seed + 3)
    paths: dict[str, Callable[[RocksTier, IdArray, RowBlock], None]] = {
        "legacy": legacy_put,
        "put": RocksTier.put,
    }
    samples: dict[str, list[float]] = {k: [] for k in paths}
    with open_store(root / "store-writes", setup, LAYOUTS["tuned"]) as store:
        layout = RowLayout(setup.dim, store.config.table(TABLE).state_dim)
        tiers = [st.cold for st in store._shard_tables(TABLE)]
        for _ in range(setup.rounds):
            batches = []
            for _ in range(setup.steps):
                ids = np.unique(rng.integers(0, setup.ids, rows_per_call, dtype=np.int64))
                rows = layout.empty(len(ids))
                rows["emb"] = random_rows(rng, len(ids), setup.dim)
                batches.append(
                    [(tiers[i], ids[p], rows[p]) for i, p in enumerate(store._split(ids))]
                )
            names = list(paths)
            random.Random(len(samples["put"])).shuffle(names)
            for name in names:
                n = 0
                t0 = time.thread_time()
                for parts in batches:
                    for tier, ids, rows in parts:
                        paths[name](tier, ids, rows)
                        n += len(ids)
                samples[name].append((time.thread_time() - t0) / n * 1e6)
        found, got = tiers[0].get(batches[-1][0][1])
        assert found.all() and got.tobytes() == batches[-1][0][2].tobytes()
    base = statistics.median(samples["legacy"])
    return {
        "rows_per_call": rows_per_call,
        "cpu_us_per_row": {k: _spread(v, base) for k, v in samples.items()},
    }


# -- eviction -------------------------------------------------------------------------------
def run_eviction(root: Path, setup: Setup, hot_rows: int, incoming: int) -> dict[str, Any]:
    """CPU per ``start_eviction`` of a full hot tier that ``incoming`` new rows pushed over."""
    table = TableConfig(TABLE, setup.dim, hot_rows=hot_rows)
    db = RocksShard(str(root / "evict"), [TABLE])
    db.open()
    rng = np.random.default_rng(setup.seed + 5)
    variants: dict[str, Callable[[ShardTable, float], int]] = {
        "legacy": legacy_start_eviction,
        "start_eviction": ShardTable.start_eviction,
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    marked: dict[str, list[int]] = {k: [] for k in variants}
    try:
        st = ShardTable(table, db, hot_rows, 0.5)
        layout = st.layout
        ids = np.arange(hot_rows + incoming, dtype=np.int64)
        rows = layout.empty(len(ids))
        rows["freq"] = rng.zipf(1.5, len(ids)).astype(np.float32)
        rows["epoch"] = rng.integers(0, 4, len(ids))
        slots = st.hot.insert(ids, rows, dirty=False)
        st.hot.pins[slots[rng.random(len(slots)) < 0.05]] = 1  # the batches in flight
        st.epoch = 4
        chosen = {}
        for name, fn in variants.items():  # the same victims, up to ties at the cut
            fn(st, 0.05)
            victims = np.flatnonzero(st.hot.evicting)
            chosen[name] = np.sort(st.effective_freq(victims))
            assert not st.hot.pins[victims].any()
            st.hot.evicting[:] = False
        assert np.array_equal(chosen["legacy"], chosen["start_eviction"])
        for _ in range(setup.rounds):
            for name in sorted(variants, key=lambda _: rng.random()):
                t0 = time.thread_time()
                for _ in range(setup.steps):
                    n = variants[name](st, 0.05)
                    marked[name].append(n)
                    st.hot.evicting[:] = False
                samples[name].append((time.thread_time() - t0) / setup.steps * 1e3)
    finally:
        db.close()
    assert marked["legacy"] == marked["start_eviction"]
    base = statistics.median(samples["legacy"])
    return {
        "hot_rows": hot_rows,
        "over_budget": incoming,
        "marked_per_call": marked["legacy"][0],
        "cpu_ms_per_call": {k: _spread(v, base) for k, v in samples.items()},
    }


def _spread(values: list[float], base: float) -> dict[str, Any]:
    """Median, minimum, every round, and the median's ratio to ``base`` (the old code's)."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "rounds": [round(x, 3) for x in values],
        "ratio_to_legacy": round(statistics.median(values) / base, 3),
    }


def run(args: argparse.Namespace) -> int:
    setup = Setup(
        ids=args.ids,
        dim=64,
        hot_fraction=0.1,
        l0_files=args.l0_files,
        l0_rows=args.l0_rows,
        memtable_rows=args.memtable_rows,
        keys_per_step=args.keys,
        steps=args.steps,
        rounds=args.rounds,
        seed=20240501,
    )
    result = run_header("rocks_read", False)
    result["setup"] = asdict(setup)
    root = Path(tempfile.mkdtemp(prefix="freshet-rocks-", dir=args.work_dir))
    try:
        if "reads" in args.parts:
            result["reads"] = run_reads(root, setup, args.layouts)
        if "writes" in args.parts:
            result["writes"] = run_writes(root, setup)
        if "eviction" in args.parts:
            result["eviction"] = run_eviction(root, setup, args.hot_rows, args.keys // SHARDS)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result["load_average_end"] = list(os.getloadavg())
    write_json(result, Path(args.out))
    for part in ("reads", "writes", "eviction"):
        if part in result:
            table = next(v for k, v in result[part].items() if k.startswith("cpu_"))
            for name, s in table.items():
                ratio = next(v for k, v in s.items() if k.startswith("ratio"))
                rounds = s.get("median_of_round_ratios", ratio)
                print(
                    f"{part:9s} {name:24s} median {s['median']:8.3f}  min {s['min']:8.3f}  "
                    f"x{ratio:.3f} (rounds x{rounds:.3f})"
                )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.rocks_read_bench --out FILE.json``."""
    parser = argparse.ArgumentParser(prog="rocks_read_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="result JSON path")
    parser.add_argument("--ids", type=int, default=3_000_000, help="ids in each store")
    parser.add_argument("--keys", type=int, default=10_000, help="cold ids read per step")
    parser.add_argument("--steps", type=int, default=6, help="steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (configurations interleaved)")
    parser.add_argument("--l0-files", type=int, default=2, help="overlapping L0 files per shard")
    parser.add_argument("--l0-rows", type=int, default=60_000, help="rows written per L0 file")
    parser.add_argument(
        "--memtable-rows", type=int, default=100_000, help="rows left in the memtables"
    )
    parser.add_argument(
        "--layouts",
        nargs="+",
        default=list(LAYOUTS),
        choices=list(LAYOUTS),
        help="SST layouts to build and read",
    )
    parser.add_argument("--hot-rows", type=int, default=250_000, help="eviction: hot rows")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["reads", "writes", "eviction"],
        choices=["reads", "writes", "eviction"],
        help="what to measure",
    )
    parser.add_argument("--work-dir", default=None, help="where the stores go")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
