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
>>> read_secret("kafka password", env="DOCTEST_UNSET")
Traceback (most recent call last):
...
pipeline.secrets.SecretError: kafka password from $DOCTEST_UNSET: the variable is unset or empty
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from pipeline.errors import PipelineError

__all__ = ["RedactSecrets", "SecretError", "read_secret", "redact", "register_secret"]

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()


class SecretError(PipelineError, ValueError):
    """A secret could not be read; the message names where from, never the value."""

    def __init__(self, what: str, source: str, detail: str) -> None:
        self.what = what
        self.source = source
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

    Exactly one source must be given; an unset variable, an unreadable or empty file raise
    :class:`SecretError` naming ``what`` and the source. The value is registered for redaction.
    """
    if (env is None) == (path is None):
        raise SecretError(what, f"${env} / {path}", "give exactly one of env or file")
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise SecretError(what, f"${env}", "the variable is unset or empty")
    else:
        assert path is not None
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            detail = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise SecretError(what, str(path), f"cannot read it ({detail})") from err
        if not value:
            raise SecretError(what, str(path), "the file is empty")
    register_secret(value)
    return value


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
