"""Errors of the embedding service: one root, specific subclasses that build their message.

:class:`ServiceUnavailableError` is also a replica-state error, so a replica's HTTP layer
answers it with 503 and the reason, never with a wrong or partial value.

>>> str(NotOwnerError("users", "ctr", "fraud"))
"table 'users' is written by 'ctr'; 'fraud' may only read it"
"""

from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.publishing.errors import ReplicaStateError


class EmbedServiceError(PipelineError):
    """Root of every error the embedding service raises."""


class RemoteTableError(EmbedServiceError):
    """A job's ``remote:`` table does not match what the service holds (its width)."""


class UnknownServiceTableError(EmbedServiceError, KeyError):
    """A table the service does not hold."""

    def __init__(self, table: str, known: list[str]) -> None:
        self.table = table
        super().__init__(f"embedding service has no table {table!r} (tables: {sorted(known)})")

    def __str__(self) -> str:
        return str(self.args[0])


class NotOwnerError(EmbedServiceError):
    """A job that does not own a table tried to write it (one writer per table)."""

    def __init__(self, table: str, owner: str, writer: str) -> None:
        self.table, self.owner, self.writer = table, owner, writer
        super().__init__(f"table {table!r} is written by {owner!r}; {writer!r} may only read it")


class TableSchemaError(EmbedServiceError):
    """A table was registered again with a different shape or initialiser."""

    def __init__(self, table: str, have: object, want: object) -> None:
        super().__init__(f"table {table!r} is registered as {have}, not {want}")


class VersionGapError(EmbedServiceError):
    """An update's base is not the version the shard holds (an update was skipped)."""

    def __init__(self, table: str, shard: int, have: int, base: int) -> None:
        self.have, self.base = have, base
        super().__init__(
            f"table {table!r} shard {shard} is at version {have}; an update from base {base} "
            "cannot apply (publish the missing versions first)"
        )


class VersionUnavailableError(EmbedServiceError):
    """A shard cannot answer at the version asked: not published yet, or already retired."""

    def __init__(self, table: str, shard: int, version: int, oldest: int, newest: int) -> None:
        self.version, self.oldest, self.newest = version, oldest, newest
        state = "not published yet" if version > newest else "retired"
        super().__init__(
            f"table {table!r} shard {shard}: version {version} is {state} "
            f"(the shard answers versions {oldest}..{newest})"
        )


class ServiceUnavailableError(ReplicaStateError, EmbedServiceError):
    """No consistent answer within the retry bound; a replica answers 503 with this reason."""

    def __init__(self, what: str, reason: str) -> None:
        self.state = "waiting for the embedding service"
        self.reason = reason
        Exception.__init__(self, f"embedding service: {what}: {reason}")
