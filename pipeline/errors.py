"""Errors raised by the streaming pipeline.

Every error derives from :class:`PipelineError` and builds its own message from the topic,
partition, offset, field or path involved.

>>> try:
...     raise DecodeError(DecodeFailure.MISSING_FIELD, "missing field 'label'", field="label")
... except PipelineError as err:
...     print(err, "|", err.failure.value, "|", err.field)
missing field 'label' | missing_field | label
"""

from __future__ import annotations

from enum import StrEnum


class PipelineError(Exception):
    """Root of every error the pipeline raises."""


class DecodeFailure(StrEnum):
    """Why a message could not be turned into an event (the dead-letter ``reason_code``)."""

    EMPTY_PAYLOAD = "empty_payload"
    BAD_JSON = "bad_json"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    INVALID_VALUE = "invalid_value"


class DecodeError(PipelineError, ValueError):
    """A message is not a valid event: bad JSON, a missing, unknown or ill-typed field, ...

    ``failure`` is the category, ``field`` the offending field (``None`` when the message as a
    whole is wrong) and ``str(err)`` a one-line reason that names both.
    """

    def __init__(self, failure: DecodeFailure, reason: str, field: str | None = None) -> None:
        self.failure = failure
        self.reason = reason
        self.field = field
        super().__init__(reason)


class UnknownEventKindError(PipelineError, KeyError):
    """An event kind that is not in the registry was asked for."""

    def __init__(self, kind: str, known: list[str]) -> None:
        self.kind = kind
        super().__init__(f"unknown event kind {kind!r}; known kinds: {sorted(known)}")

    def __str__(self) -> str:
        return str(self.args[0])


class FormatError(PipelineError, ValueError):
    """An input file could not be read in the format asked for."""

    def __init__(self, path: str, detail: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {detail}")


class ConfigError(PipelineError, ValueError):
    """A pipeline component was configured with a value it cannot use."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        super().__init__(f"{what}: {detail}")


class BrokerError(PipelineError, RuntimeError):
    """The embedded broker could not be found, started or reached, or a topic not created."""


class BrokerUnreachableError(BrokerError):
    """No bootstrap server of a Kafka client accepted a connection within the wait allowed.

    >>> err = BrokerUnreachableError.after_wait("127.0.0.1:1", 2.0, "Connection refused", "x")
    >>> str(err).split(";")[0]
    'cannot reach the Kafka broker at 127.0.0.1:1 within 2 s (Connection refused)'
    """

    @classmethod
    def after_wait(
        cls, servers: str, wait_s: float, cause: str, setting: str
    ) -> BrokerUnreachableError:
        """The error after waiting ``wait_s`` for ``servers`` (named in ``setting``)."""
        return cls(
            f"cannot reach the Kafka broker at {servers} within {wait_s:g} s ({cause}); "
            f"check {setting} and that the broker runs"
        )


class SourceError(PipelineError, RuntimeError):
    """The Kafka source failed: its polling thread died, a commit failed, a dead letter was lost."""


class SourceStateError(SourceError):
    """A source method was called in the wrong state (before ``start()``, after ``close()``)."""

    def __init__(self, what: str, state: str) -> None:
        self.state = state
        super().__init__(f"{what} is not allowed while the source is {state}")


class ReplayError(PipelineError, RuntimeError):
    """Producing a file or a generated stream into Kafka failed."""


class StoreDiskError(PipelineError, RuntimeError):
    """Training stopped because the embedding store's disk failed (full, read-only, ...).

    Names the store directory, the RocksDB operation and OS error, and the checkpoint a restart
    resumes from (none: a restart starts from the beginning of the topic).
    """

    def __init__(self, path: str, cause: BaseException, checkpoint: str | None) -> None:
        self.path = path
        self.checkpoint = checkpoint
        resume = (
            f"the last good checkpoint is {checkpoint}; a restart resumes from it"
            if checkpoint is not None
            else "there is no complete checkpoint yet; a restart starts from the beginning"
        )
        super().__init__(
            f"the embedding store's disk failed under {path!r}: {cause}; training stopped "
            f"without writing a checkpoint ({resume} once the disk is writable again)"
        )
