"""Structured logging: ``key=value`` text for people or one JSON object a line.

Modules log with ``log.info("member changed", extra={"fields": {...}})`` or the
:func:`kv` helper; the formatter appends the fields.  Configured once by
:func:`setup` from the daemon's entry point, never at import time.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        base = f"{ts}.{int(record.msecs):03d}Z {record.levelname.lower():7s} {record.name}: {record.getMessage()}"
        fields: dict[str, Any] = getattr(record, "fields", {}) or {}
        if fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # py-libp2p is chatty at info; keep its warnings.
    # py-libp2p logs an ERROR for every failed dial; membership reports what matters.
    logging.getLogger("libp2p").setLevel(
        logging.DEBUG if level.lower() == "debug" else logging.CRITICAL
    )


def kv(**fields: Any) -> dict[str, Any]:
    """``log.info("msg", extra=kv(a=1))``."""
    return {"fields": fields}
