"""The featurizer's state in checkpoints: whole in a full one, only what changed in an increment.

A :class:`FeaturizerPatches` is the checkpoint manager's patch source
(:mod:`operators.checkpoint.patches`): at each capture (a step boundary, on the training
thread) it gives the featurizer's whole ``state_dict`` for a full checkpoint, and for an
increment only the state written since the capture its base was taken at
(``Featurizer.dirty_state_since`` of the mark taken then), so an increment's featurizer bytes
grow with the entities changed, not with the entities kept::

    capture v=100 (full)   layer: kind=full,  state_dict()          mark[100] = state_mark()
    capture v=200 (incr.)  layer: kind=delta, dirty_since(mark[100]) mark[200] = ...
    restore                load_state_dict(layer 0), load_state_delta(layer 1), ...

An increment whose base mark this process does not have carries the whole state instead (a
layer says which it is): after restoring a checkpoint with no featurizer layers (written
before them, with the state in its dense tree; or a re-shard), the next increment's layer is
whole, so a restore of that chain never starts from a delta.

>>> from pipeline.features.featurizer import Featurizer
>>> from pipeline.features.spec import AggregateSpec, DenseSpec, FeatureSpec
>>> spec = FeatureSpec(time_field="t", aggregates=(AggregateSpec("c", ("c",), "x", window=2),),
...                    dense=(DenseSpec("n", aggregate="c", stat="count"),))
>>> feat = Featurizer(spec)
>>> patches = FeaturizerPatches(feat)
>>> feat.transform([{"c": i, "x": 1.0, "t": 0.0, "label": 0} for i in range(100)]).labels.shape
(100,)
>>> full = patches.capture(1, None)
>>> _ = feat.transform([{"c": 5, "x": 1.0, "t": 9.0, "label": 0}])
>>> delta = patches.capture(2, 1)
>>> len(full["agg.c.keys"]), len(delta["agg.c.keys"])
(100, 1)
>>> twin = Featurizer(spec)
>>> FeaturizerPatches(twin).restore(2, [full, delta])
>>> bool((twin.state_dict()["agg.c.stats"] == feat.state_dict()["agg.c.stats"]).all())
True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pipeline.features.featurizer import Featurizer

log = logging.getLogger(__name__)

KIND: Final = "patch.kind"
"""A layer's kind array: ``[0]`` the whole state, ``[1]`` a delta on the previous layers."""
WHOLE: Final = 0
DELTA: Final = 1

Layer = Mapping[str, npt.NDArray[Any]]


class FeaturizerPatches:
    """The patch source of one featurizer (see the module docstring). Does no I/O."""

    def __init__(self, featurizer: Featurizer) -> None:
        self.featurizer = featurizer
        self._marks: dict[int, dict[str, int]] = {}  # store version -> mark taken at its capture

    def capture(self, version: int, base_version: int | None) -> dict[str, npt.NDArray[Any]]:
        """The layer for a checkpoint at ``version`` (whole when ``base_version`` is None)."""
        feat = self.featurizer
        since = self._marks.get(base_version) if base_version is not None else None
        if since is None:
            if base_version is not None:
                log.info("no featurizer mark for base version %d: saving it whole", base_version)
            layer = {KIND: np.array([WHOLE], np.int64), **feat.state_dict()}
        else:
            layer = {KIND: np.array([DELTA], np.int64), **feat.dirty_state_since(since)}
        # the marks an increment may still build on: the base's (a failed write retries on it)
        # and this one's (once committed it is the base)
        keep = base_version if base_version is not None else version
        self._marks = {v: m for v, m in self._marks.items() if v >= keep}
        self._marks[version] = feat.state_mark()
        return layer

    def restore(self, version: int, layers: Sequence[Layer]) -> None:
        """Apply a chain's layers in order; increments then build on ``version``."""
        feat = self.featurizer
        for i, layer in enumerate(layers):
            state = {k: np.asarray(v) for k, v in layer.items() if k != KIND}
            kind = int(np.asarray(layer[KIND])[0]) if KIND in layer else WHOLE
            if kind == WHOLE:
                feat.load_state_dict(state)
            elif i == 0:
                raise ValueError("the first featurizer layer of a chain is a delta, not the state")
            else:
                feat.load_state_delta(state)
        if layers:
            self.reset(version)
        else:  # a checkpoint without layers (older format, a re-shard): the next one is whole
            self._marks = {}

    def reset(self, version: int) -> None:
        """Forget every mark; the featurizer as it is now is the state at ``version``."""
        self._marks = {version: self.featurizer.state_mark()}
