"""When the trainer's look-ahead prefetch is worth its cost: only while it finds rows to load.

Prefetching batch ``i + k`` while batch ``i`` trains hides the cold reads of the batches ahead,
but costs, on the training thread, the ids of each batch ahead (their featurisation) and a
request to the prefetch worker. Once every row a stream touches is in DRAM (a table that fits
its budget, a warm store), every prefetch finds nothing to load and that cost is all there is:
at batch 16 it was about a third of a batch's CPU (py-spy, ``freshet bench batches --kafka``).

:class:`LookAhead` pauses the look-ahead after ``quiet_after`` prefetches in a row loaded no
row, and while paused prefetches one batch in ``probe_every`` to notice when misses come back
(new ids, a drift, an eviction); the first probe that loads anything resumes it. Which batches
are prefetched never changes a value (the store is placement-invisible), only which reads the
training thread waits for.

>>> la = LookAhead(quiet_after=2, probe_every=3)
>>> [la.due() for _ in range(2)], la.saw(0), la.saw(0)
([True, True], None, None)
>>> [la.due() for _ in range(6)]  # paused: one batch in three is a probe
[False, False, True, False, False, True]
>>> la.saw(5), la.due(), la.paused
(None, True, False)
"""

from __future__ import annotations


class LookAhead:
    """Counts the prefetches that loaded nothing and decides whether the next one is due."""

    def __init__(self, quiet_after: int = 8, probe_every: int = 16) -> None:
        if quiet_after < 1 or probe_every < 1:
            raise ValueError(
                f"quiet_after and probe_every must be >= 1, got {quiet_after}, {probe_every}"
            )
        self.quiet_after = quiet_after
        self.probe_every = probe_every
        self.quiet = 0  # prefetches in a row that loaded no row
        self.since_probe = 0
        self.skipped = 0  # look-aheads not made (a counter for the job's metrics)

    @property
    def paused(self) -> bool:
        """Whether the last ``quiet_after`` prefetches loaded nothing."""
        return self.quiet >= self.quiet_after

    def due(self) -> bool:
        """Whether to prefetch the batches ahead now (call once per batch trained)."""
        if not self.paused:
            return True
        self.since_probe += 1
        if self.since_probe >= self.probe_every:
            self.since_probe = 0
            return True
        self.skipped += 1
        return False

    def saw(self, loaded: int) -> None:
        """A prefetch finished having loaded ``loaded`` rows from below DRAM (or new ones)."""
        if loaded:
            self.quiet = 0
            self.since_probe = 0
        else:
            self.quiet += 1
