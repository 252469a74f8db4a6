"""setup_logging's handler follows sys.stderr, so a replaced and closed stream breaks nothing."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from pipeline.runtime.logging import setup_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_records_go_to_the_stderr_of_the_moment(
    restore_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging()
    logging.getLogger("freshet.test").info("one")
    monkeypatch.setattr(sys, "stderr", second)
    first.close()  # what pytest does to a test's capture: a StreamHandler() would now fail
    logging.getLogger("freshet.test").warning("two")
    assert second.getvalue().endswith("WARNING freshet.test: two\n")


def test_json_format(restore_root: None, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    setup_logging("json")
    logging.getLogger("freshet.test").error("three")
    assert '"message": "three"' in out.getvalue() and '"level": "ERROR"' in out.getvalue()
