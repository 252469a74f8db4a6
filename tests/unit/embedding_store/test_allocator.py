"""tune_allocator: applied on glibc, skipped when switched off; freed blocks leave RSS."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from embedding_store.allocator import tune_allocator


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHET_MALLOC_TUNING", "0")
    assert tune_allocator() is False


def test_on_glibc_large_freed_blocks_go_back_to_the_os() -> None:
    if platform.libc_ver()[0] != "glibc":
        print("not glibc: tune_allocator is a no-op there, nothing to check")
        return
    assert tune_allocator() is True
    before = rss_bytes()
    for _ in range(20):  # 24 MB temporaries, written so the pages are real
        block = np.ones(3_000_000, dtype=np.float64)
        assert block.sum() == 3_000_000
        del block
    assert rss_bytes() - before < 16 << 20
