"""Micro-benchmark: pandas' khash tables against the public-API fallback (IndexMap).

``python -m benchmarks.hash_index_bench``: 1M int64 keys loaded, then 30 steps of 65,536 lookups
and 2,048 new keys (the store's slot index under training); then 100,000 strings set one by
one and 65,536 looked up (the featurizer's string memo). Prints ns per key; best of one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pandas._libs.hashtable import Int64HashTable, PyObjectHashTable

from embedding_store.hash_index import IndexMap


def int64_case(make: Callable[[], Any], n: int = 1_000_000, steps: int = 30) -> tuple[float, ...]:
    rng = np.random.default_rng(0)
    batch, new = 65_536, 2_048
    keys = rng.choice(2**62, n + steps * new, replace=False).astype(np.int64)
    m = make()
    t = time.perf_counter()
    m.map_keys_to_values(keys[:n], np.arange(n))
    load = time.perf_counter() - t
    looked = inserted = 0.0
    end = n
    for _ in range(steps):
        q = keys[rng.integers(0, end, batch)]
        t = time.perf_counter()
        m.lookup(q)
        looked += time.perf_counter() - t
        t = time.perf_counter()
        m.map_keys_to_values(keys[end : end + new], np.arange(end, end + new))
        inserted += time.perf_counter() - t
        end += new
    assert (np.asarray(m.lookup(keys[:10])) == np.arange(10)).all()
    return load / n * 1e9, looked / (steps * batch) * 1e9, inserted / (steps * new) * 1e9


def string_case(make: Callable[[], Any], n: int = 100_000) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    words = np.array([f"w{i}" for i in range(n)], dtype=object)
    m = make()
    t = time.perf_counter()
    for i, w in enumerate(words.tolist()):
        m.set_item(w, i)
    m.lookup(words[:1])
    setting = (time.perf_counter() - t) / n * 1e9
    q = words[rng.integers(0, n, 65_536)]
    t = time.perf_counter()
    m.lookup(q)
    return setting, (time.perf_counter() - t) / len(q) * 1e9


def main() -> None:
    for name, make in (
        ("khash Int64HashTable", lambda: Int64HashTable(1024)),
        ("IndexMap", IndexMap),
    ):
        load, look, ins = int64_case(make)
        print(f"{name:24s} load {load:.0f}  lookup {look:.0f}  insert {ins:.0f} ns/key")
    objects = (
        ("khash PyObjectHashTable", PyObjectHashTable),
        ("IndexMap(object)", lambda: IndexMap(dtype="object")),
    )
    for name, make in objects:
        setting, look = string_case(make)
        print(f"{name:24s} set_item {setting:.0f}  lookup {look:.0f} ns/key")


if __name__ == "__main__":
    main()
