"""Logging to stderr, one line per event, for journald: `LEVEL name: message key=value ...`."""

from __future__ import annotations

import logging
import sys
from typing import Any


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # journald adds its own timestamp; a terminal user still wants one
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
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
