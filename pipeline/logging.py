"""Log setup shared by every command: plain text or one JSON object per line."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from pipeline.secrets import RedactSecrets


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


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Configure the root logger once."""
    handler = logging.StreamHandler()
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
