"""Shared fixtures: paths to the shared data and small deterministic streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout (CI clones with it beside)."""
    if not SHARED_DATA.exists():  # pragma: no cover - CI always has it
        pytest.fail(f"shared data not found at {SHARED_DATA}; CI runs with ../shared beside")
    return SHARED_DATA


def zipf_ids(rng: np.random.Generator, n: int, vocab: int, a: float = 1.05) -> np.ndarray:
    """Zipf-distributed ids in [0, vocab) (ranks permuted so hot ids spread over shards)."""
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-a)
    cdf /= cdf[-1]
    r = np.searchsorted(cdf, rng.random(n))
    perm = np.random.default_rng(12345).permutation(vocab)
    return perm[r].astype(np.int64)
