"""Errors raised by the embedding store.

Every error derives from :class:`EmbeddingStoreError` and builds its own message
from the table, id, tier or path involved.

>>> try:
...     raise UnknownTableError("clicks", ["ads", "users"])
... except EmbeddingStoreError as err:
...     print(err)
unknown table 'clicks'; known tables: ['ads', 'users']
"""

from __future__ import annotations

from collections.abc import Sequence


class EmbeddingStoreError(Exception):
    """Root of every error the store raises."""


class UnknownTableError(EmbeddingStoreError, KeyError):
    """A call named a table the store does not have."""

    def __init__(self, table: str, known: Sequence[str]) -> None:
        self.table = table
        self.known = list(known)
        super().__init__(f"unknown table {table!r}; known tables: {sorted(self.known)}")

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidIdsError(EmbeddingStoreError, TypeError):
    """Ids were not a one-dimensional int64 array or tensor."""

    def __init__(self, table: str, detail: str) -> None:
        self.table = table
        super().__init__(f"table {table!r}: ids must be a 1-D int64 array or tensor; {detail}")


class ShapeError(EmbeddingStoreError, ValueError):
    """A tensor had the wrong dimension, shape or dtype for its table."""

    def __init__(self, table: str, detail: str) -> None:
        self.table = table
        super().__init__(f"table {table!r}: {detail}")


class StoreClosedError(EmbeddingStoreError, RuntimeError):
    """The store (or one of its tiers) was used after ``close()``."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is closed; open a new store to use it again")


class StoreNotOpenError(EmbeddingStoreError, RuntimeError):
    """The store was used before ``open()``."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not open; call open() (or use it as a context manager)")


class SchemaMismatchError(EmbeddingStoreError, ValueError):
    """A directory holds tables whose schema differs from the one asked for."""

    def __init__(self, path: str, table: str, stored: object, requested: object) -> None:
        self.path = path
        self.table = table
        super().__init__(
            f"store at {path!r} was written with a different schema for table {table!r}: "
            f"stored {stored}, requested {requested}"
        )


class StorageError(EmbeddingStoreError, OSError):
    """The cold tier's disk failed (read-only, full, corrupt, locked)."""

    def __init__(self, path: str, operation: str, cause: BaseException) -> None:
        self.path = path
        self.operation = operation
        super().__init__(f"RocksDB {operation} failed at {path!r}: {cause}")


class ConfigError(EmbeddingStoreError, ValueError):
    """A table or store configuration value is out of range."""


class SlabFullError(EmbeddingStoreError, RuntimeError):
    """Rows were put into a slab tier that has no free slots left for them."""

    def __init__(self, path: str, wanted: int, free: int) -> None:
        self.path = path
        super().__init__(
            f"slab tier at {path!r} is full: {wanted} new rows, {free} free slots "
            "(a SlabChain demotes rows to RocksDB to make room; a bare SlabTier does not)"
        )
