"""Logging for kiln processes: text locally, JSON in the cluster.

Only ``__main__`` modules call :func:`setup`. A filter copies the current
request id and app id (from context variables set per request) onto every
record, so log lines can be joined with request logs.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("kiln_request_id", default="-")
app_id: contextvars.ContextVar[str] = contextvars.ContextVar("kiln_app_id", default="-")


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``app_id`` from context variables to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.app_id = app_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "app_id": getattr(record, "app_id", "-"),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(*, level: str = "INFO", fmt: str = "text", component: str = "kiln") -> None:
    """Configure the root logger once for a process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {component} %(name)s [%(app_id)s %(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
