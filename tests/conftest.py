"""Shared fixtures: paths to the shared data and small deterministic streams."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.runtime.logging import StderrHandler

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _freshet_log_handler_removed() -> Iterator[None]:
    """A test that runs a command in-process (``setup_logging``) leaves no handler behind:
    later tests' background threads then log through pytest's capture, not through the
    handler of a test that has ended. Levels are put back too."""
    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    levels = root.level, kafka.level
    yield
    for handler in root.handlers[:]:
        if isinstance(handler, StderrHandler):
            root.removeHandler(handler)
    root.setLevel(levels[0])
    kafka.setLevel(levels[1])


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
