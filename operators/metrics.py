"""A small in-process metrics registry: counters and gauges with labels, thread-safe.

Operators record what they did here; ``snapshot()`` gives a flat dict whose keys follow the
Prometheus text format (``name{label="value",...}``), so exposing it later is a formatting
step, not a redesign.

>>> m = MetricsRegistry()
>>> m.inc("operator_runs_total", operator="expiry", outcome="done")
>>> m.inc("operator_runs_total", operator="expiry", outcome="done")
>>> m.set("store_hit_ratio", 0.93, table="ads")
>>> m.snapshot()
{'operator_runs_total{operator="expiry",outcome="done"}': 2.0, 'store_hit_ratio{table="ads"}': 0.93}
>>> m.get("operator_runs_total", operator="expiry", outcome="done")
2.0
"""

from __future__ import annotations

import threading
from enum import Enum

LabelKey = tuple[tuple[str, str], ...]


class MetricKind(Enum):
    """A counter only grows; a gauge is set to its latest value."""

    COUNTER = "counter"
    GAUGE = "gauge"


def _key(name: str, labels: LabelKey) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{name}{{{inner}}}"


class MetricsRegistry:
    """Counters and gauges keyed by name and labels."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, LabelKey], float] = {}
        self._kinds: dict[str, MetricKind] = {}
        self._lock = threading.Lock()

    def _check_kind(self, name: str, kind: MetricKind) -> None:
        known = self._kinds.setdefault(name, kind)
        if known is not kind:
            raise ValueError(f"metric {name!r} is a {known.value}, not a {kind.value}")

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` (>= 0) to a counter."""
        if value < 0:
            raise ValueError(f"counter {name!r} cannot decrease (got {value})")
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._check_kind(name, MetricKind.COUNTER)
            self._values[key] = self._values.get(key, 0.0) + float(value)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._check_kind(name, MetricKind.GAUGE)
            self._values[key] = float(value)

    def get(self, name: str, **labels: str) -> float | None:
        """The current value of one series (None if never recorded)."""
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))))

    def kinds(self) -> dict[str, MetricKind]:
        """Each metric name's kind."""
        with self._lock:
            return dict(self._kinds)

    def snapshot(self) -> dict[str, float]:
        """Every series as ``{'name{labels}': value}``, sorted by key."""
        with self._lock:
            items = [(_key(n, labels), v) for (n, labels), v in self._values.items()]
        return dict(sorted(items))
