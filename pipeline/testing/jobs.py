"""A shipped job config pointed at a test broker, topic and store (tests and benchmarks).

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     config = shipped_job("ctr", "127.0.0.1:9", "clicks", d + "/store", group_id="g")
>>> config.source.topic, config.source.group_id, config.source.session_timeout_ms
('clicks', 'g', 6000)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from configs.job import JobConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def shipped_job(
    name: str, bootstrap: str, topic: str, store_path: str | Path, **source: Any
) -> JobConfig:
    """``configs/<name>.yaml`` reading ``topic`` from ``bootstrap`` into a store at ``store_path``.

    ``source`` overrides fields of the source section (``group_id``, ``max_events``, ...); the
    group session timeout is 6 s unless given, so a test's group join stays short.
    """
    base = JobConfig.from_yaml(CONFIGS / f"{name}.yaml")
    update = {"bootstrap_servers": [bootstrap], "topic": topic, "session_timeout_ms": 6000}
    return base.model_copy(
        update={
            "source": base.source.model_copy(update={**update, **source}),
            "store": base.store.model_copy(update={"path": str(store_path)}),
        }
    )
