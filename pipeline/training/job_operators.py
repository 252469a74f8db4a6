"""Wire a job's ``operators:`` and ``publish:`` sections into a :class:`TrainJob`.

::

    TrainJob.open()
      └─ JobOperators.open():  newest complete checkpoint? ─yes─► restore rows, dense
                               parameters, optimizer and featurizer state, offsets, counts
                               APScheduler starts (it only decides *when*)
    after every step:          scheduler.run_pending(context)   migration, checkpoints, expiry
                               publisher (if due)                one model version
    TrainJob.close():          final checkpoint (synchronous) when checkpoints are configured

Everything runs on the training thread at a step boundary; checkpoint file I/O runs on the
checkpoint manager's own thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from operators import failpoints
from operators.base import OperatorContext, OperatorReport
from operators.checkpoint.dense_state import flatten_tree, unflatten_tree
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.write_log import WriteLogWatermarks
from operators.metrics import MetricsRegistry
from operators.scheduler import OperatorScheduler

if TYPE_CHECKING:
    from pipeline.training.job import TrainJob

log = logging.getLogger(__name__)
REPORTS_KEPT = 256


def offsets_to_json(offsets: Mapping[tuple[str, int], int]) -> dict[str, int]:
    """``{(topic, partition): offset}`` as ``{"topic/partition": offset}``.

    >>> offsets_to_json({("t", 1): 5})
    {'t/1': 5}
    """
    return {f"{t}/{p}": int(o) for (t, p), o in sorted(offsets.items())}


def offsets_from_json(raw: Mapping[str, Any]) -> dict[tuple[str, int], int]:
    """Inverse of :func:`offsets_to_json`.

    >>> offsets_from_json({"t/1": 5})
    {('t', 1): 5}
    """
    out: dict[tuple[str, int], int] = {}
    for key, value in raw.items():
        topic, _, part = key.rpartition("/")
        out[(topic, int(part))] = int(value)
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


class JobOperators:
    """Checkpoints (with restore), scheduled operators and publishing for one job."""

    def __init__(self, job: TrainJob) -> None:
        self.job = job
        self.manager: CheckpointManager | None = None
        self.scheduler: OperatorScheduler | None = None
        self.publisher: Any = None
        self.metrics = MetricsRegistry()
        self.watermarks = WriteLogWatermarks()
        self.restored_version: int | None = None
        # the latest operator reports (bounded: a job runs for months); report_count counts all
        self.reports: deque[OperatorReport] = deque(maxlen=REPORTS_KEPT)
        self.report_count = 0
        self.delta_publish: Any = None
        self._dense_cache: tuple[int, dict[str, Any], Any] | None = None

    # -- state the operators read --------------------------------------------
    def config_hash(self) -> str:
        """A hash of what must match for a checkpoint to be resumed (features and model)."""
        cfg = self.job.config
        body = {
            "features": cfg.features.model_dump(mode="json"),
            "model": cfg.model.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def _flat(self) -> tuple[dict[str, Any], Any]:
        job = self.job
        assert job.store is not None and job.trainer is not None and job.featurizer is not None
        version = job.store.version
        if self._dense_cache is None or self._dense_cache[0] != version:
            tree: dict[str, Any] = {
                "model": job.model.state_dict(),
                "featurizer": dict(job.featurizer.state_dict()),
            }
            if job.trainer.dense_optimizer is not None:
                tree["optim"] = job.trainer.dense_optimizer.state_dict()
            arrays, skeleton = flatten_tree(tree)
            # copies: a background checkpoint must not see later steps' in-place updates
            self._dense_cache = (version, {k: _copy(v) for k, v in arrays.items()}, skeleton)
        return self._dense_cache[1], self._dense_cache[2]

    def context(self) -> OperatorContext:
        """What the scheduled operators see at this step boundary."""
        job = self.job
        assert job.store is not None
        return OperatorContext(
            store=job.store,
            metrics=self.metrics,
            dense_state=lambda: self._flat()[0],
            source_offsets=lambda: offsets_to_json(job.source.snapshot() if job.source else {}),
            config_hash=self.config_hash(),
            extra=lambda: {"dense_skeleton": self._flat()[1], "events_trained": job.events_trained},
        )

    # -- life cycle ----------------------------------------------------------
    def open(self) -> None:
        """Restore the newest complete checkpoint, start the scheduler and the publisher."""
        cfg = self.job.config
        ops = cfg.operators
        if ops is not None and ops.checkpoint is not None:
            ck = ops.checkpoint
            self.manager = CheckpointManager(
                ck.dir,
                ck.retention,
                ck.rows_per_file,
                watermarks=self.watermarks,
                file_hook=lambda path: failpoints.hit("checkpoint_file"),
            )
            self._restore()
        if ops is not None and ops.schedules:
            self.scheduler = OperatorScheduler(ops.to_schedules(), ops.to_operators(self.manager))
            self.scheduler.start()
            self.job.step_hooks.append(lambda job: self.run_pending())
        if cfg.publish is not None:
            self._start_publisher()

    def _restore(self) -> None:
        job, manager = self.job, self.manager
        assert manager is not None and job.store is not None
        latest = manager.latest_complete()
        if latest is None:
            log.info("no complete checkpoint under %s: starting fresh", manager.root)
            return
        restored = manager.restore(job.store, clear=True)
        if restored.config_hash and restored.config_hash != self.config_hash():
            log.warning(
                "checkpoint %s was written with config hash %s, this job has %s",
                restored.checkpoint,
                restored.config_hash,
                self.config_hash(),
            )
        skeleton = restored.extra.get("dense_skeleton")
        if skeleton is not None:
            tree = unflatten_tree(restored.dense_tensors(), skeleton)
            job.model.load_state_dict(tree["model"])
            assert job.featurizer is not None and job.trainer is not None
            job.featurizer.load_state_dict(
                {
                    k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v)
                    for k, v in tree["featurizer"].items()
                }
            )
            if "optim" in tree and job.trainer.dense_optimizer is not None:
                job.trainer.dense_optimizer.load_state_dict(tree["optim"])
        job.start_offsets = offsets_from_json(dict(restored.offsets))
        job.events_trained = int(restored.extra.get("events_trained", 0))
        self.restored_version = restored.version
        log.info(
            "restored checkpoint %s (version %d, %d events trained); resuming at %s",
            restored.checkpoint,
            restored.version,
            job.events_trained,
            dict(restored.offsets),
        )

    def _start_publisher(self) -> None:
        from pipeline.publishing.operator import DeltaPublish
        from pipeline.publishing.publisher import Publisher

        pub_cfg = self.job.config.publish
        self.publisher = Publisher(
            pub_cfg.bootstrap,
            pub_cfg.topic,
            pub_cfg.snapshot_dir,
            settings=pub_cfg.to_settings(),
            signer=pub_cfg.signing.signer(),
            client_config=self.job.config.source.security.client_config(),
        )
        self.publisher.start()
        self.delta_publish = DeltaPublish(self.publisher, watermarks=self.watermarks)
        self.delta_publish.attach(self.job)

    def run_pending(self) -> None:
        """Run the operators the scheduler has queued (training thread, step boundary)."""
        if self.scheduler is not None:
            reports = self.scheduler.run_pending(self.context())
            self.reports.extend(reports)
            self.report_count += len(reports)

    def final_checkpoint(self) -> None:
        """Write a last checkpoint synchronously (at a clean stop)."""
        job, manager = self.job, self.manager
        if manager is None or job.store is None:
            return
        manager.wait()
        ctx = self.context()
        write = manager.write_incremental if manager.has_base(job.store) else manager.write_full
        info = write(
            job.store,
            dense=ctx.dense_state(),
            offsets=ctx.source_offsets(),
            config_hash=ctx.config_hash,
            extra=ctx.extra(),
        )
        log.info("final checkpoint %s at version %d", info.id, info.version)

    def close(self, clean: bool) -> None:
        """Stop the scheduler, write the final checkpoint if ``clean``, close the publisher."""
        if self.scheduler is not None:
            self.scheduler.shutdown()
        try:
            if clean:
                self.final_checkpoint()
        finally:
            if self.manager is not None:
                self.manager.close()
            if self.publisher is not None:
                self.publisher.close()
