"""Type aliases shared by the store's modules.

>>> import numpy as np
>>> ids: IdArray = np.array([1, 2, 3], dtype=np.int64)
>>> ids.dtype
dtype('int64')
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

FeatureId: TypeAlias = int
"""One sparse feature id (int64; strings are hashed to it at the edge)."""

RowVersion: TypeAlias = int
"""The training step that last wrote a row."""

TableName: TypeAlias = str

IdArray: TypeAlias = npt.NDArray[np.int64]
SlotArray: TypeAlias = npt.NDArray[np.int64]
FloatArray: TypeAlias = npt.NDArray[np.float32]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
