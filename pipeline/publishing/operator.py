"""The delta-publish operator: one model version per interval, at a training step boundary.

It runs on the training thread between two steps, so the store, the dense parameters and the
featurizer state it reads all belong to the same step (design decision 3)::

    TrainJob.run ─► train batch ─► batch hooks: on_batch (remembers when the step ended)
                               └─► step hooks:  DeltaPublish(job)
                                                  due? ─► run(job) ─► Publisher.publish(...)
                                                                  └─► write-log watermark

Until the operators package defines a common operator interface, this one exposes
``run(context) -> PublishReport | None`` over a minimal :class:`PublishContext` (anything with
``store``, ``model`` and ``featurizer``, as :class:`pipeline.training.job.TrainJob` has), and is
itself a step hook (``job.step_hooks.append(op)``; :meth:`DeltaPublish.attach` adds both
hooks). With ``watermarks``
(:class:`operators.checkpoint.write_log.WriteLogWatermarks` or anything with
``register``/``advance``) the store's write log is never truncated past rows the publisher
has yet to send.

>>> class Job:
...     step_hooks, batch_hooks = [], []
>>> job = Job()
>>> op = DeltaPublish(publisher=None).attach(job)
>>> job.step_hooks == [op], len(job.batch_hooks)
(True, 1)
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from embedding_store import EmbeddingStore
from pipeline.features.featurizer import Featurizer
from pipeline.publishing.publisher import Publisher, PublishReport

log = logging.getLogger(__name__)

CONSUMER = "publisher"
"""The name this operator's watermark goes by."""


class PublishContext(Protocol):
    """What the operator reads between two steps."""

    @property
    def store(self) -> EmbeddingStore | None:
        """The trainer's store (``None`` before it is open: nothing is published)."""
        ...

    @property
    def model(self) -> Any:
        """The model (``state_dict()`` gives its dense parameters)."""
        ...

    @property
    def featurizer(self) -> Featurizer | None:
        """The featurizer (its ``state_dict()`` is part of the version)."""
        ...


class Watermarks(Protocol):
    """Write-log watermarks shared with other consumers of the log (checkpoints)."""

    def register(self, consumer: str) -> None:
        """Hold truncation until ``consumer`` advances."""
        ...

    def advance(self, store: Any, consumer: str, version: int) -> None:
        """``consumer`` has saved every row written up to ``version``."""
        ...


class Hooked(Protocol):
    """A job with hook lists (:class:`pipeline.training.job.TrainJob`)."""

    step_hooks: list[Any]
    batch_hooks: list[Any]


class DeltaPublish:
    """Publishes a version whenever the publisher says one is due (see the module docstring)."""

    name = "delta_publish"

    def __init__(self, publisher: Publisher, *, watermarks: Watermarks | None = None) -> None:
        self.publisher = publisher
        self.watermarks = watermarks
        self.last_report: PublishReport | None = None
        self.published = 0
        self.seconds = 0.0
        self._step_time: datetime | None = None
        if watermarks is not None:
            watermarks.register(CONSUMER)

    def attach(self, job: Hooked) -> DeltaPublish:
        """Add this operator to ``job``'s batch hooks (step time) and step hooks (publish)."""
        job.batch_hooks.append(self.on_batch)
        job.step_hooks.append(self)
        return self

    def on_batch(self, batch: object, result: object) -> None:
        """Remember when the latest training step ended (its version's step time)."""
        self._step_time = datetime.now(UTC)

    def __call__(self, context: PublishContext) -> None:
        """Step hook: publish if due."""
        if self.publisher.due():
            self.run(context)

    def run(self, context: PublishContext) -> PublishReport | None:
        """Publish the context's current state now (``None`` if it has not changed)."""
        store, featurizer = context.store, context.featurizer
        if store is None or featurizer is None or context.model is None:
            return None
        t0 = time.perf_counter()
        report = self.publisher.publish(
            store, context.model.state_dict(), featurizer.state_dict(), self._step_time
        )
        self.seconds += time.perf_counter() - t0
        if report is None:
            return None
        self.published += 1
        self.last_report = report
        if self.watermarks is not None:
            self.watermarks.advance(store, CONSUMER, report.store_version)
        log.debug(
            "published v%d: %d rows, %d tombstones, %d bytes in %.1f ms",
            report.version,
            report.rows,
            report.tombstones,
            report.bytes,
            report.seconds * 1e3,
        )
        return report
