"""Errors raised while declaring or computing features.

Each derives from :class:`pipeline.errors.PipelineError` and names the feature, field or
path involved.

>>> try:
...     raise FeatureSpecError("cross 'cust_x_term'", "unknown feature 'terminal'")
... except PipelineError as err:
...     print(err)
feature spec: cross 'cust_x_term': unknown feature 'terminal'
"""

from __future__ import annotations

from pipeline.errors import PipelineError

__all__ = ["FeatureError", "FeatureSpecError", "FeatureValueError", "PipelineError"]


class FeatureError(PipelineError):
    """Root of the feature errors."""


class FeatureSpecError(FeatureError, ValueError):
    """A feature spec is inconsistent (a dangling reference, a table used two ways, ...)."""

    def __init__(self, where: str, detail: str) -> None:
        self.where = where
        super().__init__(f"feature spec: {where}: {detail}")


class FeatureValueError(FeatureError, ValueError):
    """An event field could not be read as the type its feature declares."""

    def __init__(self, field: str, expected: str, cause: object) -> None:
        self.field = field
        super().__init__(f"field {field!r}: expected {expected} values ({cause})")
