"""Secrets (Kafka passwords, delta signing keys): from the environment or a file, never logged.

A YAML config names where a secret lives (``sasl_password_env``, ``key_file``, ...), never the
secret itself. :func:`read_secret` reads it and registers the value; :class:`RedactSecrets`,
a logging filter that ``freshet``'s log set-up puts on its handler, masks every registered
value in every record, whatever logger (ours, kafka-python's, APScheduler's) emitted it.

>>> import os
>>> os.environ["DOCTEST_SECRET"] = "hunter2-long"
>>> read_secret("kafka password", env="DOCTEST_SECRET")
'hunter2-long'
>>> redact("login with hunter2-long failed")
'login with *** failed'
>>> read_secret("kafka password", env="DOCTEST_UNSET")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pipeline.runtime.secrets.SecretError: kafka password from $DOCTEST_UNSET: the variable is unset...
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from pipeline.errors import PipelineError

__all__ = [
    "RedactSecrets",
    "SecretError",
    "read_secret",
    "read_secret_bytes",
    "redact",
    "register_secret",
]

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()


class SecretError(PipelineError, ValueError):
    """A secret could not be read; the message names where from, never the value."""

    def __init__(self, what: str, source: str, detail: str) -> None:
        self.what = what
        self.source = source
        self.detail = detail
        super().__init__(f"{what} from {source}: {detail}")


def register_secret(value: str) -> None:
    """Mask ``value`` in every log record from now on (empty values are ignored)."""
    if value:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (longest first)."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def read_secret(
    what: str, env: str | None = None, path: str | os.PathLike[str] | None = None
) -> str:
    """The secret in environment variable ``env`` or file ``path`` (whitespace stripped).

    Exactly one source must be given; an unset variable, an unreadable, empty or non-UTF-8
    file raise :class:`SecretError` naming ``what`` and the source. The value is registered
    for redaction.
    """
    raw = read_secret_bytes(what, env, path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SecretError(what, str(path), "cannot read it (not UTF-8 text)") from err


def read_secret_bytes(
    what: str, env: str | None = None, path: str | os.PathLike[str] | None = None
) -> bytes:
    """:func:`read_secret` for binary secrets (signing keys): a file's bytes are kept as-is."""
    if (env is None) == (path is None):
        raise SecretError(what, f"${env} / {path}", "give exactly one of env or file")
    if env is not None:
        raw = os.environ.get(env, "").strip().encode()
        if not raw:
            raise SecretError(what, f"${env}", "the variable is unset or empty")
    else:
        assert path is not None
        try:
            raw = Path(path).read_bytes().strip()
        except OSError as err:
            raise SecretError(what, str(path), f"cannot read it ({err.strerror})") from err
        if not raw:
            raise SecretError(what, str(path), "the file is empty")
    register_secret(raw.decode("utf-8", "replace"))
    return raw


class RedactSecrets(logging.Filter):
    """A handler filter that masks registered secrets in the message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place if it mentions a secret; always keep it."""
        with _lock:
            if not _secrets:
                return True
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
