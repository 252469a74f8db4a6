"""Frozen configuration of tables and stores (the core never sees YAML or pydantic).

>>> table = TableConfig("ads", dim=8, optimizer=OptimizerConfig("rowwise_adagrad", lr=0.05))
>>> table.state_dim
1
>>> StoreConfig(path="/tmp/x", tables=(table,), num_shards=4).table("ads").dim
8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from embedding_store.errors import ConfigError, UnknownTableError

OptimizerKind = Literal["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"]
OPTIMIZER_KINDS: tuple[OptimizerKind, ...] = ("sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl")
Compression = Literal["none", "snappy", "lz4", "zstd"]
COMPRESSIONS: tuple[Compression, ...] = ("none", "snappy", "lz4", "zstd")


class Unadmitted(Enum):
    """What a lookup returns for an id that has not been admitted yet."""

    INITIAL = "initial"
    ZEROS = "zeros"


@dataclass(frozen=True)
class OptimizerConfig:
    """A sparse optimizer fused into ``apply_gradients``.

    ``lr`` is the step size (FTRL's alpha); ``eps`` guards divisions; ``beta1``/``beta2``
    are Adam's decay rates; ``l1``/``l2``/``beta`` are FTRL-Proximal's; ``initial_accumulator``
    seeds Adagrad's and FTRL's squared-gradient sums.
    """

    kind: OptimizerKind = "rowwise_adagrad"
    lr: float = 0.01
    eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.999
    l1: float = 0.0
    l2: float = 0.0
    beta: float = 1.0
    initial_accumulator: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZER_KINDS:
            raise ConfigError(f"optimizer kind {self.kind!r} not in {OPTIMIZER_KINDS}")
        if not self.lr > 0:
            raise ConfigError(f"optimizer lr must be > 0, got {self.lr}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ConfigError(f"Adam betas must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if self.l1 < 0 or self.l2 < 0 or self.eps < 0 or self.initial_accumulator < 0:
            raise ConfigError("optimizer l1, l2, eps and initial_accumulator must be >= 0")

    def state_dim(self, dim: int) -> int:
        """Width of the per-row optimizer state for an embedding of ``dim`` floats."""
        return {
            "sgd": 0,
            "adagrad": dim,
            "rowwise_adagrad": 1,
            "adam": 2 * dim + 1,
            "ftrl": 2 * dim,
        }[self.kind]


@dataclass(frozen=True)
class TableConfig:
    """One embedding table.

    A row's first value is a deterministic function of ``(seed, id)`` drawn uniformly from
    ``[-init_scale, init_scale]``. ``hot_rows`` bounds the DRAM tier (all shards together;
    ``None`` keeps every row in DRAM). An id gets a row after ``admit_after`` sightings;
    rows not seen for ``expire_after_steps`` steps or ``expire_after_seconds`` seconds may
    be expired by :meth:`EmbeddingStore.expire`. ``slab_rows``/``slab_bytes`` give the table a
    slab (SSD) tier between DRAM and RocksDB of that many rows (all shards together; the
    tighter of the two): ``None`` for both, the default, means no slab.
    """

    name: str
    dim: int
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    seed: int = 0
    init_scale: float = 0.05
    hot_rows: int | None = None
    hot_bytes: int | None = None
    admit_after: int = 1
    unadmitted: Unadmitted = Unadmitted.INITIAL
    expire_after_steps: int | None = None
    expire_after_seconds: float | None = None
    slab_rows: int | None = None
    slab_bytes: int | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"table name {self.name!r} must be non-empty [A-Za-z0-9_-]")
        if not 1 <= self.dim <= 65536:
            raise ConfigError(f"table {self.name!r}: dim must be in [1, 65536], got {self.dim}")
        if self.hot_rows is not None and self.hot_rows < 0:
            raise ConfigError(f"table {self.name!r}: hot_rows must be >= 0")
        if self.hot_bytes is not None and self.hot_bytes < 0:
            raise ConfigError(f"table {self.name!r}: hot_bytes must be >= 0")
        for name in ("slab_rows", "slab_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"table {self.name!r}: {name} must be >= 1 or None, got {value}")
        if self.admit_after < 1:
            raise ConfigError(f"table {self.name!r}: admit_after must be >= 1")
        if self.init_scale < 0:
            raise ConfigError(f"table {self.name!r}: init_scale must be >= 0")

    @property
    def state_dim(self) -> int:
        """Width of the optimizer state of one row."""
        return self.optimizer.state_dim(self.dim)

    def hot_budget_rows(self, row_bytes: int) -> int | None:
        """The DRAM budget in rows (the tighter of ``hot_rows`` and ``hot_bytes``)."""
        budgets = [b for b in (self.hot_rows,) if b is not None]
        if self.hot_bytes is not None:
            budgets.append(self.hot_bytes // max(row_bytes, 1))
        return min(budgets) if budgets else None

    def slab_budget_rows(self, row_bytes: int) -> int | None:
        """The slab budget in rows (the tighter of ``slab_rows`` and ``slab_bytes``), or None.

        >>> TableConfig("t", dim=4, slab_rows=1000, slab_bytes=2600).slab_budget_rows(52)
        50
        """
        budgets = [b for b in (self.slab_rows,) if b is not None]
        if self.slab_bytes is not None:
            budgets.append(max(self.slab_bytes // max(row_bytes, 1), 1))
        return min(budgets) if budgets else None

    def schema(self) -> dict[str, object]:
        """What must match for a directory written with this table to be reopened."""
        return {
            "dim": self.dim,
            "optimizer": self.optimizer.kind,
            "state_dim": self.state_dim,
            "seed": self.seed,
            "init_scale": self.init_scale,
        }


@dataclass(frozen=True)
class SstConfig:
    """How RocksDB lays out the cold tier's files and reads them.

    ``bloom_bits_per_key`` > 0 gives every table file and memtable a Bloom filter of whole
    keys, so a read skips the recent files (flushed write-backs, overlapping every older one)
    that do not hold its key: ~10 bits a key (1.25 B, beside a 292-byte row of dim 64) for
    a 1% false-positive rate; 0: none. ``block_size`` is the bytes of a data block, the unit
    a cold read loads, checks and caches to find one row; smaller blocks need a bigger index,
    held in memory (about 20 B a block). ``compression`` applies to blocks as they are
    written (embeddings hardly compress: RocksDB then stores the block as is, having spent
    the CPU trying). ``hash_index`` adds a hash index to each data block. ``verify_checksums``
    checks every block read. ``fill_cache`` keeps the blocks that cold reads load in the block
    cache: off by default, since a cold row lands in the DRAM tier, which is the cache, and the
    rows read next are random, rarely in a block already read (skipping the fill took 0.84x
    the CPU per cold read in ``benchmarks.rocks_read_bench``). All but ``verify_checksums``,
    ``fill_cache`` and the memtables' filter are per file: a directory written with other
    values opens and reads as before.

    >>> SstConfig(block_size=100)
    Traceback (most recent call last):
    ...
    embedding_store.errors.ConfigError: sst block_size must be in [256, 1 MiB], got 100
    """

    block_size: int = 4096
    compression: Compression = "none"
    bloom_bits_per_key: int = 10
    hash_index: bool = False
    verify_checksums: bool = True
    fill_cache: bool = False

    def __post_init__(self) -> None:
        if not 256 <= self.block_size <= 1 << 20:
            raise ConfigError(f"sst block_size must be in [256, 1 MiB], got {self.block_size}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"sst compression {self.compression!r} not in {COMPRESSIONS}")
        if not 0 <= self.bloom_bits_per_key <= 64:
            raise ConfigError(
                f"sst bloom_bits_per_key must be in [0, 64], got {self.bloom_bits_per_key}"
            )


@dataclass(frozen=True)
class StoreConfig:
    """A store: where it lives, its tables, and how it is sharded.

    ``staleness`` is the bound S on how many versions behind a read may be (0: synchronous).
    ``lfu_decay`` ages access counts by this factor at every :meth:`EmbeddingStore.age`.
    ``evict_slack`` evicts a little below the budget so eviction runs in batches.
    RocksDB's own memory is bounded for the whole store, all shards and tables together:
    ``block_cache_bytes`` is one LRU block cache they share, ``memtable_budget_bytes`` caps
    their memtables (RocksDB flushes early to stay under it; ``None``: only the per-column-family
    ``write_buffer_bytes``, up to two of them each). ``sst`` is the layout of its table files.
    ``parallel_shards`` runs the shards' parts of a lookup or update on a thread pool, but
    only for calls of at least ``parallel_min_rows`` unique ids: below that, handing work to
    threads costs more than the work (``freshet bench batches``; benchmarks/results/HISTORY.md).
    """

    path: str
    tables: tuple[TableConfig, ...]
    num_shards: int = 4
    staleness: int = 0
    lfu_decay: float = 0.5
    evict_slack: float = 0.05
    parallel_shards: bool = True
    parallel_min_rows: int = 1024
    write_buffer_bytes: int = 16 << 20
    sync_writes: bool = False
    block_cache_bytes: int = 32 << 20
    memtable_budget_bytes: int | None = 64 << 20
    sst: SstConfig = field(default_factory=SstConfig)
    slab_path: str | None = None
    slab_resident_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.num_shards <= 1024:
            raise ConfigError(f"num_shards must be in [1, 1024], got {self.num_shards}")
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate table names in {names}")
        if self.staleness < 0:
            raise ConfigError("staleness must be >= 0")
        if not 0.0 < self.lfu_decay <= 1.0:
            raise ConfigError(f"lfu_decay must be in (0, 1], got {self.lfu_decay}")
        if not 0.0 <= self.evict_slack < 1.0:
            raise ConfigError(f"evict_slack must be in [0, 1), got {self.evict_slack}")
        if self.parallel_min_rows < 0:
            raise ConfigError(f"parallel_min_rows must be >= 0, got {self.parallel_min_rows}")
        if self.block_cache_bytes < 0:
            raise ConfigError(f"block_cache_bytes must be >= 0, got {self.block_cache_bytes}")
        if self.memtable_budget_bytes is not None and self.memtable_budget_bytes < 1 << 20:
            raise ConfigError(
                f"memtable_budget_bytes must be >= 1 MiB or None, got {self.memtable_budget_bytes}"
            )

        if self.slab_resident_bytes is not None and self.slab_resident_bytes < 1 << 16:
            raise ConfigError(
                f"slab_resident_bytes must be >= 64 KiB or None, got {self.slab_resident_bytes}"
            )

    def slab_dir(self) -> str:
        """Where slab files live.

        >>> StoreConfig("/data/s", ()).slab_dir()
        '/data/s/slab'
        """
        return self.slab_path if self.slab_path is not None else f"{self.path}/slab"

    def table(self, name: str) -> TableConfig:
        """The table called ``name``."""
        for t in self.tables:
            if t.name == name:
                return t
        raise UnknownTableError(name, [t.name for t in self.tables])
