"""Errors raised by the operators and the checkpoint machinery.

Every error derives from :class:`OperatorError` and builds its own message from the
checkpoint, file, operator or schedule involved.

>>> try:
...     raise ChecksumMismatchError("000001-0002", "rows-ads-0000.rows.npy", "ab12", "cd34")
... except OperatorError as err:
...     print(err)
checkpoint 000001-0002: file rows-ads-0000.rows.npy has sha256 cd34, expected ab12
"""

from __future__ import annotations

from collections.abc import Sequence


class OperatorError(Exception):
    """Root of every error the operators package raises."""


class CheckpointError(OperatorError):
    """Something is wrong with one checkpoint (``checkpoint`` names it, or the directory)."""

    def __init__(self, checkpoint: str, detail: str) -> None:
        self.checkpoint = checkpoint
        self.detail = detail
        super().__init__(f"checkpoint {checkpoint}: {detail}")


class CheckpointNotFoundError(CheckpointError, KeyError):
    """A checkpoint id is not in the chain manifest."""

    def __init__(self, checkpoint: str, known: Sequence[str]) -> None:
        self.known = list(known)
        shown = self.known[-5:]
        super().__init__(checkpoint, f"not found in the chain manifest; newest known: {shown}")

    def __str__(self) -> str:
        return str(self.args[0])


class NoCompleteCheckpointError(OperatorError):
    """No checkpoint under a directory verifies (or there is none at all)."""

    def __init__(self, root: str, detail: str = "") -> None:
        self.root = root
        suffix = f": {detail}" if detail else ""
        super().__init__(f"no complete checkpoint under {root!r}{suffix}")


class ChecksumMismatchError(CheckpointError):
    """A checkpoint file's sha256 differs from the one its manifest recorded."""

    def __init__(self, checkpoint: str, file: str, expected: str, actual: str) -> None:
        self.file = file
        self.expected = expected
        self.actual = actual
        super().__init__(checkpoint, f"file {file} has sha256 {actual}, expected {expected}")


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is missing, unreadable, or does not hold what its manifest says."""

    def __init__(self, checkpoint: str, file: str, detail: str) -> None:
        self.file = file
        self.reason = detail  # what is wrong with the file, without its name
        super().__init__(checkpoint, f"file {file}: {detail}")


class ChainManifestError(OperatorError):
    """The chain manifest (``chains.json``) cannot be read or written."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"chain manifest {path!r}: {detail}")


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, permissions, ...); the previous one stands."""

    def __init__(self, checkpoint: str, path: str, cause: BaseException) -> None:
        self.path = path
        super().__init__(checkpoint, f"writing {path!r} failed: {cause}")


class NoBaseCheckpointError(CheckpointError):
    """An incremental checkpoint was asked for without a base written for this store."""

    def __init__(self, root: str) -> None:
        super().__init__(
            root,
            "no checkpoint was written or restored by this manager for this store, so the "
            "store's write log cannot say what changed; write a full checkpoint first",
        )


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint's tables do not fit the store it is restored into."""

    def __init__(self, checkpoint: str, table: str, detail: str) -> None:
        self.table = table
        super().__init__(checkpoint, f"table {table!r}: {detail}")


class StoreNotEmptyError(CheckpointError):
    """A restore target already holds rows (restore into an empty store or pass clear=True)."""

    def __init__(self, checkpoint: str, table: str, rows: int) -> None:
        self.table = table
        super().__init__(
            checkpoint,
            f"the target store's table {table!r} holds {rows} rows; restore into a store "
            "opened on an empty directory, or pass clear=True",
        )


class DenseStateError(OperatorError):
    """A dense parameter or optimizer value cannot be stored as a plain array."""

    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(f"dense state {name!r}: {detail}")


class ScheduleError(OperatorError, ValueError):
    """An operator schedule is malformed or names an unknown operator."""

    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(f"schedule {name!r}: {detail}")
