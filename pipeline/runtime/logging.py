"""Log setup shared by every command: plain text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from pipeline.runtime.secrets import RedactSecrets


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with a timezone-aware timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        out = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:  # set (and redacted) by RedactSecrets
            out["exc"] = record.exc_text
        elif record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler writing to ``sys.stderr`` as it is when each record is emitted.

    A plain ``StreamHandler()`` keeps the ``sys.stderr`` of the moment it was made: once that
    stream is replaced and closed (pytest's capture between tests, a daemon redirecting
    its output), a background thread's later records fail with "I/O operation on closed
    file". This one follows the replacement, as :data:`logging.lastResort` does, unless
    ``setStream`` pins it to another stream.
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)
        self._pinned: Any = None

    @property
    def stream(self) -> Any:
        """The stream given to ``setStream``, else the current ``sys.stderr``."""
        return self._pinned if self._pinned is not None else sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        self._pinned = value


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Configure the root logger once."""
    handler = StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())  # no secret reaches a log line, whoever logs it
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every connection and fetch at INFO
    logging.getLogger("kafka").setLevel(max(level, logging.WARNING))
