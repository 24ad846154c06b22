"""Logging to stderr, one line per event, for journald: `LEVEL name: message key=value ...`."""

from __future__ import annotations

import logging
import sys
from typing import Any

# this process's fields for every line it logs: a worker's database (set_context)
_context: dict[str, Any] = {}


class _ContextFilter(logging.Filter):
    """Adds `context` to each record: the fields set_context gave, or nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # a line that already names the field keeps its own
        record.context = fields(**{key: value for key, value in _context.items() if f" {key}=" not in message})
        return True


def set_context(**values: Any) -> None:
    """Fields every later line of this process ends with; a worker sets its database, so that
    whatever it logs (a job, a slot, a lost connection) names the database it serves."""
    _context.clear()
    _context.update({key: value for key, value in values.items() if value is not None})


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # journald adds its own timestamp; a terminal user still wants one
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s%(context)s"))
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def fields(**values: Any) -> str:
    """' job=... worker=...' with None values left out and spaces in values quoted."""
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        text = str(value)
        parts.append(f"{key}={text!r}" if (" " in text or not text) else f"{key}={text}")
    return (" " + " ".join(parts)) if parts else ""
