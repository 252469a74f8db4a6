"""Prometheus' standard process, platform and GC metrics, for a registry of one's own.

Freshet's trainer and replicas keep their metrics in registries of their own (several replicas
may share a process), so prometheus_client's default registry, which carries these, is not
served. :func:`register_standard_collectors` adds them to such a registry:
``process_resident_memory_bytes`` (what a DRAM-budgeted store is sized against),
``process_cpu_seconds_total``, ``process_open_fds``, ``python_info``,
``python_gc_collections_total``, ...

The collectors are built on the first scrape, not on registration (``ProcessCollector`` reads
``/proc`` when built), so registering does no I/O.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> registry = CollectorRegistry()
>>> register_standard_collectors(registry)
>>> b"python_gc_collections_total" in generate_latest(registry)
True
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["StandardCollectors", "register_standard_collectors"]


class StandardCollectors(Collector):
    """Process, platform and GC metrics, built on first collect; see the module docstring."""

    def __init__(self) -> None:
        self._inner: CollectorRegistry | None = None

    def collect(self) -> Iterable[Metric]:
        """Every metric of the three standard collectors (process metrics only on Linux)."""
        if self._inner is None:
            inner = CollectorRegistry()  # each collector registers itself in one
            ProcessCollector(registry=inner)
            PlatformCollector(registry=inner)
            GCCollector(registry=inner)
            self._inner = inner
        yield from self._inner.collect()


def register_standard_collectors(registry: CollectorRegistry) -> None:
    """Add the standard process, platform and GC metrics to ``registry``."""
    registry.register(StandardCollectors())
