"""Errors of delta publishing and inference replicas.

Every error derives from :class:`ServingError` (itself a
:class:`~pipeline.errors.PipelineError`) and builds its own message from the version, chunk,
file, table or field involved.

>>> try:
...     raise ChecksumError("delta v12 (base 11)", "ab" * 32, "cd" * 32)
... except ServingError as err:
...     print(err)
delta v12 (base 11): sha256 mismatch (header says abababababab..., payload is cdcdcdcdcdcd...)
"""

from __future__ import annotations

from pipeline.errors import PipelineError


class ServingError(PipelineError):
    """Root of every error raised by the publisher, the delta format and replicas."""


class DeltaFormatError(ServingError, ValueError):
    """Bytes that should hold a delta, a chunk or a snapshot file do not parse."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        super().__init__(f"{what}: {detail}")


class ChecksumError(ServingError, ValueError):
    """A payload's sha256 differs from the one its header or manifest names."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.what = what
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{what}: sha256 mismatch (header says {expected[:12]}..., payload is {actual[:12]}...)"
        )


class SignatureError(ServingError, ValueError):
    """An HMAC signature is missing where a key is configured, or does not verify."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        super().__init__(f"{what}: {detail}")


class SigningKeyError(ServingError, ValueError):
    """The signing key could not be read from its environment variable or file."""

    def __init__(self, source: str, detail: str) -> None:
        self.source = source
        super().__init__(f"signing key from {source}: {detail}")


class DeltaMismatchError(ServingError, ValueError):
    """A delta does not fit the model it is applied to (unknown table, wrong dim or shape)."""

    def __init__(self, version: int, detail: str) -> None:
        self.version = version
        super().__init__(f"delta v{version}: {detail}")


class SnapshotError(ServingError, RuntimeError):
    """A snapshot could not be written, found, read or verified."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"snapshot {path}: {detail}")


class PublishError(ServingError, RuntimeError):
    """A delta could not be produced to Kafka or the publisher was used in the wrong state."""


class ReplicaStateError(ServingError, RuntimeError):
    """A replica was asked for something its state does not allow (not ready, closed)."""

    def __init__(self, what: str, state: str) -> None:
        self.state = state
        super().__init__(f"{what} is not possible while the replica is {state}")


class RequestError(ServingError, ValueError):
    """A ``/predict`` request is malformed; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)
