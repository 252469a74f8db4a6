"""How much per-entity state (aggregates, entity states) a featurizer keeps, and for how long.

Window aggregates keep a ring of ``window + delay`` slots per entity (a customer, a terminal);
a stream of ever new entity ids would grow that state without end. A :class:`StateBudget`
bounds it, like the hot tier bounds embedding rows:

- ``budget_bytes``: the bytes all aggregates and entity states
  (:mod:`pipeline.features.entity_state`) may hold together. It is turned into one entity
  cap per aggregate and entity state, in proportion to what an entity costs in each (a
  30-slot ring costs more than a 1-slot one), so that the caps add up to the budget. Over its
  cap each drops its least recently updated entities (see :mod:`pipeline.features.aggregates`
  and :mod:`pipeline.features.entity_rows`).
- ``ttl_seconds``: an entity not updated for this long (in event time, from the newest event
  seen) is dropped. ``None`` keeps entities until the budget needs their room.

::

    budget_bytes = 100 MB, aggregates a (1,040 B/entity) and b (304 B/entity):
      every aggregate gets the same cap n = 100 MB / (1,040 + 304) = 74,404 entities

Both rules depend on the events alone (buckets and update order), so a job restarted from a
checkpoint drops what the uninterrupted job drops.

>>> from pipeline.features.spec import AggregateSpec
>>> aggs = (AggregateSpec("a", ("c",), window=30), AggregateSpec("b", ("t",), window=7))
>>> caps = StateBudget(budget_bytes=100_000_000).entity_caps(aggs)
>>> caps
{'a': 74404, 'b': 74404}
>>> StateBudget(ttl_seconds=86400 * 3).ttl_buckets(aggs[0])
3
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.features.aggregates import WindowedAggregate
from pipeline.features.entity_state import DistinctCount, SincePrevious
from pipeline.features.spec import AggregateSpec, EntityStateSpec

__all__ = ["StateBudget"]


@dataclass(frozen=True)
class StateBudget:
    """A bound on featurizer state: total bytes and an event-time expiry (module docstring)."""

    budget_bytes: int | None = None
    ttl_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.budget_bytes is not None and self.budget_bytes < 1:
            raise ValueError(f"budget_bytes must be >= 1, got {self.budget_bytes}")
        if self.ttl_seconds is not None and not self.ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be > 0, got {self.ttl_seconds}")

    def entity_caps(
        self,
        aggregates: Sequence[AggregateSpec],
        entity_states: Sequence[EntityStateSpec] = (),
    ) -> dict[str, int | None]:
        """Entities each aggregate and entity state may keep (``None`` without a byte budget)."""
        names = [a.name for a in aggregates] + [e.name for e in entity_states]
        if self.budget_bytes is None or not names:
            return dict.fromkeys(names)
        per_entity = sum(WindowedAggregate.bytes_per_entity(a.window, a.delay) for a in aggregates)
        for e in entity_states:
            kind = SincePrevious if e.kind == "since_previous" else DistinctCount
            per_entity += kind.bytes_per_entity()
        cap = max(1, self.budget_bytes // per_entity)
        return dict.fromkeys(names, cap)

    def ttl_buckets(self, aggregate: AggregateSpec) -> int | None:
        """The expiry in ``aggregate``'s buckets (rounded up), or ``None``."""
        if self.ttl_seconds is None:
            return None
        return math.ceil(self.ttl_seconds / aggregate.bucket_seconds)
