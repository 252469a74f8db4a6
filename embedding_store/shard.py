"""One table in one shard: the DRAM tier over the RocksDB tier, with LFU, pins and admission.

::

    fetch(ids) ─► DRAM hit? ──yes──────────────────────────► gather, count, pin
                     │no
                     ▼
                 RocksDB multi-get ─found─► insert into DRAM ─┘
                     │absent
                     ▼
                 admitted (seen k times)? ─yes─► initial row ─┘
                     │no
                     ▼
                 initial value or zeros, nothing stored

Eviction runs in two halves: ``start_eviction`` (at a step boundary, on the training thread)
marks the least-used unpinned rows; ``finish_eviction`` (on the write-back thread) copies the
dirty ones, writes them to RocksDB outside the lock, then frees the slots of rows nobody touched
or pinned meanwhile. Until then the rows stay readable in DRAM, so no read ever sees RocksDB
older than DRAM. ``demote``/``migrate`` evict synchronously. Pinned rows are never evicted.
LFU counts age lazily: a row's effective count is ``freq * decay ** (epoch_now - epoch)``.

>>> import tempfile, numpy as np
>>> from embedding_store.config import TableConfig
>>> from embedding_store.rocks import RocksShard, RocksTier
>>> with tempfile.TemporaryDirectory() as d:
...     db = RocksShard(d, ["t"]); db.open()
...     shard = ShardTable(TableConfig("t", dim=2), db, budget_rows=1, decay=0.5)
...     emb, slots = shard.fetch(np.array([1, 2], dtype=np.int64), step=1, now=0.0)
...     shard.unpin(slots); moved = shard.enforce_budget(slack=0.0)
...     counts = shard.hot.count(), shard.cold.count()
...     db.close()
>>> emb.shape, moved, counts
((2, 2), 1, (1, 1))
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embedding_store import optimizers
from embedding_store.admission import Sightings
from embedding_store.chain import SlabChain
from embedding_store.config import TableConfig, Unadmitted
from embedding_store.dram import DramTier
from embedding_store.initializers import initial_values
from embedding_store.rocks import RocksShard, RocksTier
from embedding_store.rows import RowLayout
from embedding_store.slab import SlabTier
from embedding_store.tier import RowBlock
from embedding_store.types import FloatArray, IdArray, SlotArray

_LOG_COMPACT_AT = 64
_SAMPLE = 4096


def _same_bytes(a: RowBlock, b: RowBlock) -> npt.NDArray[np.bool_]:
    """Per row, whether two blocks of rows hold the same bytes (NaNs compare equal).

    >>> rows = np.zeros(2, dtype=[("emb", np.float32, 2)])
    >>> other = rows.copy(); other["emb"][1, 0] = 1.0
    >>> _same_bytes(rows, other).tolist(), _same_bytes(rows[:0], other[:0]).tolist()
    ([True, False], [])
    """
    if not len(a):
        return np.zeros(0, dtype=np.bool_)
    x = np.ascontiguousarray(a).view(np.uint8).reshape(len(a), -1)
    y = np.ascontiguousarray(b).view(np.uint8).reshape(len(b), -1)
    return np.asarray((x == y).all(axis=1), dtype=np.bool_)


def smallest(values: FloatArray, n: int) -> SlotArray:
    """Positions of the ``n`` smallest ``values`` (``0 < n <= len(values)``), in no order.

    Ties at the cut are broken arbitrarily, as by ``np.argpartition``. A strided sample first
    guesses a cut a little above the n-th value, so that only the values below it (about n)
    are partitioned; if fewer than n are below, all are.

    >>> sorted(smallest(np.array([5.0, 1.0, 4.0, 1.0, 3.0], dtype=np.float32), 3).tolist())
    [1, 3, 4]
    """
    step = len(values) // _SAMPLE
    if step >= 4 and n < len(values):
        sample = values[::step]
        k = min(len(sample) - 1, int(n / step * 1.1) + 16)
        cut = np.partition(sample, k)[k]
        below = np.flatnonzero(values <= cut)
        if len(below) >= n:
            return below[np.argpartition(values[below], n - 1)[:n]]
    return np.argpartition(values, n - 1)[:n]


@dataclass
class ShardCounters:
    """Running counters of one shard-table."""

    hits: int = 0  # ids a lookup found in DRAM
    misses: int = 0  # ids a lookup had to read from RocksDB or create (on the step's path)
    cold_reads: int = 0  # ids looked for in RocksDB, by lookups or by prefetch
    created: int = 0
    evicted: int = 0
    written_back: int = 0
    prefetched: int = 0


class ShardTable:
    """Hot over cold tier for one table in one shard. Every public method takes the lock.

    With an open ``slab``, the cold tier is a :class:`~embedding_store.chain.SlabChain`
    (slab over RocksDB, LFU between them by this table's aged counts).
    """

    def __init__(
        self,
        table: TableConfig,
        db: RocksShard,
        budget_rows: int | None,
        decay: float,
        slab: SlabTier | None = None,
    ) -> None:
        self.table = table
        self.layout = RowLayout(table.dim, table.state_dim)
        self.hot = DramTier(self.layout)
        rocks = db.tier(table.name, self.layout)
        self.cold: RocksTier | SlabChain = (
            rocks if slab is None else SlabChain(slab, rocks, lambda: (self.epoch, decay))
        )
        self.budget_rows = budget_rows
        self.decay = np.float32(decay)
        self.epoch = 0
        self.lock = threading.RLock()
        self.counters = ShardCounters()
        self.evict_generation = 0
        self.sightings = Sightings(table.admit_after)
        # write log: (max version, ids written) chunks; a superset, filtered by row version
        self._log: list[tuple[int, IdArray]] = []

    # -- reading -------------------------------------------------------------
    def fetch(
        self, ids: IdArray, step: int, now: float, pin: bool = True
    ) -> tuple[FloatArray, SlotArray]:
        """Embeddings of unique ``ids`` and their DRAM slots (-1: not admitted, not stored)."""
        with self.lock:
            hot = self.hot
            slots = hot.find(ids)
            miss = np.flatnonzero(slots < 0)
            self.counters.hits += len(ids) - len(miss)
            self.counters.misses += len(miss)
            stored: npt.NDArray[np.bool_] | None = None  # None: every id has a row
            if len(miss):
                slots[miss] = self._load(ids[miss], step, now)
                stored = slots >= 0
                if stored.all():
                    stored = None
            s = slots if stored is None else slots[stored]
            created = hot.provisional[s]
            if created.any():
                self.counters.created += int(created.sum())
            self._touch(s, step, now)
            if pin:
                hot.pins[s] += 1
            emb: FloatArray = hot.rows["emb"][s]
            if stored is None:
                return emb, slots
            out = np.empty((len(ids), self.table.dim), dtype=np.float32)
            out[stored] = emb
            out[~stored] = self._unadmitted_values(ids[~stored])
            return out, slots

    def _load(self, ids: IdArray, step: int, now: float) -> SlotArray:
        """Bring missing ids into DRAM from RocksDB or as new rows; -1 where not admitted."""
        found, rows = self.cold.get(ids)
        self.counters.cold_reads += len(ids)
        slots = np.full(len(ids), -1, dtype=np.int64)
        if found.any():
            slots[found] = self.hot.insert(ids[found], rows[found], dirty=False)
        new = np.flatnonzero(~found)
        if len(new):
            admit = self.sightings.admit(ids[new], step, now)
            new = new[admit]
            if len(new):
                slots[new] = self.hot.insert(ids[new], self._initial_rows(ids[new]), dirty=True)
                self.counters.created += len(new)
        return slots

    def _initial_rows(self, ids: IdArray) -> RowBlock:
        t = self.table
        rows = self.layout.empty(len(ids))
        emb = initial_values(ids, t.dim, t.seed, t.init_scale)
        rows["emb"] = emb
        if self.layout.state_dim:
            rows["state"] = optimizers.initial_state(emb, t.optimizer)
        rows["version"] = 0
        rows["freq"] = 0.0
        rows["epoch"] = self.epoch
        rows["last_step"] = 0
        rows["last_time"] = 0.0
        return rows

    def _unadmitted_values(self, ids: IdArray) -> FloatArray:
        t = self.table
        if t.unadmitted is Unadmitted.ZEROS:
            return np.zeros((len(ids), t.dim), dtype=np.float32)
        return initial_values(ids, t.dim, t.seed, t.init_scale)

    def _touch(self, slots: SlotArray, step: int, now: float) -> None:
        rows = self.hot.rows
        freq = rows["freq"][slots]
        if (rows["epoch"][slots] != self.epoch).any():  # else every count is as it was
            freq = self.effective_freq(slots)
        rows["freq"][slots] = freq + np.float32(1.0)
        rows["epoch"][slots] = self.epoch
        rows["last_step"][slots] = step
        rows["last_time"][slots] = now
        self.hot.dirty[slots] = True
        self.hot.evicting[slots] = False
        self.hot.provisional[slots] = False

    def effective_freq(self, slots: SlotArray) -> FloatArray:
        """Aged LFU counts of DRAM rows."""
        rows = self.hot.rows
        age = (self.epoch - rows["epoch"][slots]).astype(np.float32)
        return (rows["freq"][slots] * np.power(self.decay, age)).astype(np.float32)

    def _block_effective_freq(self, rows: RowBlock) -> FloatArray:
        age = (self.epoch - rows["epoch"]).astype(np.float32)
        return (rows["freq"] * np.power(self.decay, age)).astype(np.float32)

    # -- writing -------------------------------------------------------------
    def apply(self, ids: IdArray, grads: FloatArray, version: int, step: int, now: float) -> int:
        """Apply the optimizer to unique ``ids``; unadmitted ids' gradients are dropped."""
        with self.lock:
            slots = self.hot.find(ids)
            miss = np.flatnonzero(slots < 0)
            if len(miss):  # gradients without a prior lookup this step
                slots[miss] = self._load(ids[miss], step, now)
                ok = slots[miss] >= 0
                self._touch(slots[miss][ok], step, now)
                keep = slots >= 0
                s, ids, grads = slots[keep], ids[keep], grads[keep]
                if not len(s):
                    return 0
            elif not len(slots):
                return 0
            else:
                s = slots
            prov = self.hot.provisional[s]
            if prov.any():  # prefetched ahead but never looked up: make them real now
                self._touch(s[prov], step, now)
            rows = self.hot.rows
            emb = rows["emb"][s]
            # gather the state column alone, not whole structured rows
            state = (
                rows["state"][s]
                if self.layout.state_dim
                else np.zeros((len(s), 0), dtype=np.float32)
            )
            new_emb, new_state = optimizers.update(emb, state, grads, self.table.optimizer)
            rows["emb"][s] = new_emb
            if self.layout.state_dim:
                rows["state"][s] = new_state
            rows["version"][s] = version
            self.hot.dirty[s] = True
            self._log_written(ids, version)
            return len(s)

    def _log_written(self, ids: IdArray, version: int) -> None:
        self._log.append((version, ids.copy()))
        if len(self._log) > _LOG_COMPACT_AT:
            top = max(v for v, _ in self._log)
            self._log = [(top, np.unique(np.concatenate([i for _, i in self._log])))]

    def unpin(self, slots: SlotArray) -> None:
        """Release one pin on each stored slot."""
        with self.lock:
            s = slots[slots >= 0]  # unique per call, so plain fancy indexing is exact
            self.hot.pins[s] -= 1
            self.hot.release_retired()

    # -- placement -----------------------------------------------------------
    def enforce_budget(self, slack: float) -> int:
        """Evict down to ``budget * (1 - slack)`` rows now if over budget; returns rows evicted."""
        with self.lock:
            over = self._over_budget(slack)
            return self._evict(over) if over > 0 else 0

    def _over_budget(self, slack: float) -> int:
        if self.budget_rows is None or self.hot.count() <= self.budget_rows:
            return 0
        return self.hot.count() - int(self.budget_rows * (1.0 - slack))

    def start_eviction(self, slack: float) -> int:
        """Mark rows for a background eviction down to the budget; returns rows marked.

        Cheap unless DRAM is over budget by more than the rows already marked: then the
        least-used unpinned rows are marked, as :meth:`_evict` would choose them.
        """
        with self.lock:
            over = self._over_budget(slack)
            if over <= 0:
                return 0
            hot, high = self.hot, self.hot.high
            live = hot.live[:high]
            over -= int(np.count_nonzero(hot.evicting[:high] & live))
            if over <= 0:
                return 0
            cand = np.flatnonzero(live & (hot.pins[:high] == 0) & ~hot.evicting[:high])
            n = min(over, len(cand))
            if n <= 0:
                return 0
            if n < len(cand):
                # aged counts of all slots in one pass over the rows (no gather by slot)
                freq = self._block_effective_freq(hot.rows[:high])[cand]
                cand = cand[smallest(freq, n)]
            hot.evicting[cand] = True
            return n

    def finish_eviction(self) -> int:
        """Write marked rows back (RocksDB call outside the lock) and free them; returns freed."""
        with self.lock:
            live = self.hot.live_slots()
            marked = live[self.hot.evicting[live]]
            marked_ids = self.hot.ids[marked].copy()
            was_dirty = self.hot.dirty[marked]
            dirty = marked[was_dirty]
            ids, rows = self.hot.ids[dirty].copy(), self.hot.rows[dirty].copy()
        self.cold.put(ids, rows)  # releases the GIL; rows stay readable in DRAM meanwhile
        with self.lock:
            still = (
                self.hot.live[marked]
                & self.hot.evicting[marked]
                & (self.hot.ids[marked] == marked_ids)
                & (self.hot.pins[marked] == 0)
            )
            # A step may have trained a row since its copy was taken (clearing its mark) and
            # a later round marked it again: the tier below holds the older copy, so the row
            # stays. Clean rows must still be clean; dirty ones must hold the bytes written.
            unchanged = ~self.hot.dirty[marked]
            unchanged[was_dirty] = _same_bytes(self.hot.rows[dirty], rows)
            gone = marked[still & unchanged]
            self.hot.remove(gone)
            self.evict_generation += 1
            self.counters.evicted += len(gone)
            self.counters.written_back += len(ids)
            return len(gone)

    def _evict(self, n: int) -> int:
        live = self.hot.live_slots()
        cand = live[self.hot.pins[live] == 0]
        n = min(n, len(cand))
        if n <= 0:
            return 0
        victims = cand[smallest(self.effective_freq(cand), n)] if n < len(cand) else cand
        self._write_back(victims)
        self.hot.remove(victims)
        self.evict_generation += 1
        self.counters.evicted += n
        return n

    def _write_back(self, slots: SlotArray) -> None:
        dirty = slots[self.hot.dirty[slots]]
        if len(dirty):
            self.cold.put(self.hot.ids[dirty], self.hot.rows[dirty])
            self.hot.dirty[dirty] = False
            self.counters.written_back += len(dirty)

    def flush(self) -> int:
        """Write every dirty DRAM row to RocksDB; returns rows written."""
        with self.lock:
            live = self.hot.live_slots()
            before = self.counters.written_back
            self._write_back(live)
            if isinstance(self.cold, SlabChain):
                self.cold.flush()  # the slab is a cache: what must last goes to RocksDB
            return self.counters.written_back - before

    def demote(self, n: int) -> int:
        """Move the ``n`` least-used unpinned rows to RocksDB."""
        with self.lock:
            return self._evict(n)

    def migrate(self, scan_limit: int | None = None) -> tuple[int, int]:
        """Swap cold rows used more than the least-used hot rows, within the budget.

        Returns ``(promoted, demoted)``. Reads RocksDB through a consistent iterator.
        """
        with self.lock:
            budget = self.budget_rows
            room = (budget - self.hot.count()) if budget is not None else None
            best_ids: list[IdArray] = []
            best_freq: list[FloatArray] = []
            limit = budget if budget is not None else 0
            scanned = 0
            for chunk_ids, chunk_rows in self.cold.iterate():
                absent = self.hot.find(chunk_ids) < 0
                ids = chunk_ids[absent]
                f = self._block_effective_freq(chunk_rows[absent])
                best_ids.append(ids)
                best_freq.append(f)
                if limit and sum(len(x) for x in best_ids) > 2 * limit:
                    ids_all, f_all = np.concatenate(best_ids), np.concatenate(best_freq)
                    top = np.argpartition(-f_all, limit - 1)[:limit]
                    best_ids, best_freq = [ids_all[top]], [f_all[top]]
                scanned += len(ids)
                if scan_limit is not None and scanned >= scan_limit:
                    break
            if room is None or not best_ids:
                return 0, 0
            cids, cfreq = np.concatenate(best_ids), np.concatenate(best_freq)
            order = np.argsort(-cfreq, kind="stable")
            cids, cfreq = cids[order], cfreq[order]
            live = self.hot.live_slots()
            cand = live[self.hot.pins[live] == 0]
            hfreq = self.effective_freq(cand)
            horder = np.argsort(hfreq, kind="stable")
            cand, hfreq = cand[horder], hfreq[horder]
            # fill free room first, then swap while the cold row beats the hot one
            fill = min(max(room, 0), len(cids))
            m = min(len(cids) - fill, len(cand))
            # cfreq falls and hfreq rises, so the winning swaps are a prefix
            k = int(np.count_nonzero(cfreq[fill : fill + m] > hfreq[:m]))
            demoted = 0
            if k:
                self._write_back(cand[:k])
                self.hot.remove(cand[:k])
                self.evict_generation += 1
                demoted = k
            promote = cids[: fill + k]
            if len(promote):
                found, rows = self.cold.get(promote)
                self.hot.insert(promote[found], rows[found], dirty=False)
            if isinstance(self.cold, SlabChain):
                self.cold.migrate(scan_limit)  # and RocksDB's hottest rows into the slab
            return int(found.sum()) if len(promote) else 0, demoted

    def prefetch(self, ids: IdArray) -> SlotArray:
        """Load ids' stored rows into DRAM and pin them; cold reads happen outside the lock."""
        with self.lock:
            slots = self.hot.find(ids)
            have = slots[slots >= 0]
            self.hot.pins[have] += 1
            self.hot.evicting[have] = False
            miss = ids[slots < 0]
            generation = self.evict_generation
            self.counters.cold_reads += len(miss)
        if not len(miss):
            return slots[slots >= 0]
        found, rows = self.cold.get(miss)  # the GIL is released in here
        with self.lock:
            if self.evict_generation != generation:  # rows may have been written back since
                found, rows = self.cold.get(miss)
            now_slots = self.hot.find(miss)
            fresh = found & (now_slots < 0)
            if fresh.any():
                now_slots[fresh] = self.hot.insert(miss[fresh], rows[fresh], dirty=False)
                self.counters.prefetched += int(fresh.sum())
            new = ~found & (now_slots < 0)
            if new.any() and self.table.admit_after <= 1:
                # new ids: build their rows now, invisible until a lookup makes them real
                now_slots[new] = self.hot.insert(
                    miss[new], self._initial_rows(miss[new]), dirty=False, provisional=True
                )
            got = now_slots >= 0
            self.hot.pins[now_slots[got]] += 1
            self.hot.evicting[now_slots[got]] = False
            return np.concatenate([slots[slots >= 0], now_slots[now_slots >= 0]])

    # -- maintenance ---------------------------------------------------------
    def expire(self, min_step: int | None, min_time: float | None) -> IdArray:
        """Delete rows last seen before ``min_step`` / ``min_time``; returns their ids.

        Pinned rows expire too (a prefetch's pins must not decide what expires): they leave
        the tier at once and their slots are freed when unpinned. Sightings of unadmitted ids
        age out by the same rule. Prefetch reads in flight are invalidated, so none puts an
        expired row back into DRAM.
        """
        with self.lock:
            expired: list[IdArray] = []
            live = self.hot.live_slots()
            prov = self.hot.provisional[live]
            # never real: dropped without a tombstone (pinned ones stay, invisible)
            self.hot.remove(live[prov & (self.hot.pins[live] == 0)])
            live = live[~prov]
            old = self._stale(self.hot.rows[live], min_step, min_time)
            if old.any():
                gone = live[old]
                expired.append(self.hot.ids[gone].copy())
                pinned = self.hot.pins[gone] > 0
                self.hot.remove(gone[~pinned])
                self.hot.retire(gone[pinned])
            for ids, rows in self.cold.iterate():
                old = self._stale(rows, min_step, min_time) & (self.hot.find(ids) < 0)
                if old.any():
                    expired.append(ids[old])
            out = np.unique(np.concatenate(expired)) if expired else np.empty(0, np.int64)
            self.cold.delete(out)
            self.sightings.expire(min_step, min_time)
            self.evict_generation += 1  # a prefetch that read RocksDB before this reads again
            return out

    @staticmethod
    def _stale(
        rows: RowBlock, min_step: int | None, min_time: float | None
    ) -> npt.NDArray[np.bool_]:
        old = np.zeros(len(rows), dtype=np.bool_)
        if min_step is not None:
            old |= rows["last_step"] < min_step
        if min_time is not None:
            old |= rows["last_time"] < min_time
        return old

    def advance_epoch(self) -> None:
        """Age every LFU count by one decay step (O(1): counts age lazily)."""
        with self.lock:
            self.epoch += 1

    # -- export --------------------------------------------------------------
    def written_since(self, version: int) -> tuple[IdArray, RowBlock]:
        """Rows whose version is greater than ``version``."""
        with self.lock:
            cands = [ids for v, ids in self._log if v > version]
            if not cands:
                return np.empty(0, np.int64), self.layout.empty(0)
            ids = np.unique(np.concatenate(cands))
            found, rows = self.read(ids)
            keep = found & (rows["version"] > version)
            return ids[keep], rows[keep]

    def truncate_log(self, version: int) -> None:
        """Forget write-log entries at or below ``version``."""
        with self.lock:
            self._log = [(v, i) for v, i in self._log if v > version]

    def read(self, ids: IdArray) -> tuple[npt.NDArray[np.bool_], RowBlock]:
        """Rows of ``ids`` from whichever tier holds them, without counting or pinning."""
        with self.lock:
            slots = self.hot.find(ids)
            found = slots >= 0
            found[found] = ~self.hot.provisional[slots[found]]
            rows = self.layout.empty(len(ids))
            rows[found] = self.hot.rows[slots[found]]
            rest = np.flatnonzero(~found)
            if len(rest):
                cfound, crows = self.cold.get(ids[rest])
                rows[rest[cfound]] = crows[cfound]
                found[rest[cfound]] = True
            return found, rows

    def fetch_stored(self, ids: IdArray, step: int, now: float) -> FloatArray:
        """Embeddings of unique ``ids`` for a reader that never writes (a serving replica).

        Stored rows are read as :meth:`fetch` reads them (RocksDB rows cached in DRAM,
        unpinned); an id with no row gets the value an unadmitted id gets, and no row, nor
        any sighting, is created for it.
        """
        with self.lock:
            slots = self.hot.find(ids)
            miss = np.flatnonzero(slots < 0)
            self.counters.hits += len(ids) - len(miss)
            self.counters.misses += len(miss)
            if len(miss):
                found, rows = self.cold.get(ids[miss])
                self.counters.cold_reads += len(miss)
                if found.any():
                    slots[miss[found]] = self.hot.insert(ids[miss[found]], rows[found], dirty=False)
            stored = slots >= 0
            out = np.empty((len(ids), self.table.dim), dtype=np.float32)
            s = slots[stored]
            self._touch(s, step, now)
            out[stored] = self.hot.rows["emb"][s]
            if not stored.all():
                out[~stored] = self._unadmitted_values(ids[~stored])
            return out

    def remove_rows(self, ids: IdArray) -> None:
        """Delete ``ids`` from both tiers."""
        with self.lock:
            slots = self.hot.find(ids)
            self.hot.remove(slots[slots >= 0])
            self.evict_generation += 1
            self.cold.delete(ids)

    def write(self, ids: IdArray, rows: RowBlock) -> None:
        """Overwrite rows (import): DRAM copies are dropped, RocksDB gets the new value."""
        with self.lock:
            slots = self.hot.find(ids)
            self.hot.remove(slots[slots >= 0])
            self.evict_generation += 1
            if isinstance(self.cold, SlabChain):
                self.cold.write_through(ids, rows)  # imports go to RocksDB, not the cache
            else:
                self.cold.put(ids, rows)
            if len(ids):
                self._log_written(ids, int(rows["version"].max()))
