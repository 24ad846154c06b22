"""Logging, one line per event: `LEVEL name: message key=value ...` on stderr, or under systemd
the same line in the journal with the fields as journal fields (JOB_ID, WORKER, DATABASE, TOOL,
TARGET), so that `journalctl -u pggit-supervisor JOB_ID=...` finds one job's whole story.

Callers write `log.info("job claimed" + fields(job=..., worker=...))` either way: fields()
returns the rendered ` key=value` text as a str that also carries its values (Fields), and
stays one when a message is added to it, so the journal handler reads the values from the
record's message instead of parsing the text back.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

try:  # python3-systemd (Debian 12); without it the journal is reached through stderr lines
    from systemd.journal import JournalHandler
except ImportError:
    JournalHandler = None

# this process's fields for every line it logs: a worker's database (set_context)
_context: dict[str, Any] = {}

# fields() keys -> the journal fields people filter on; any other key becomes PGGIT_<KEY>, so
# no field of ours can pass for one of journald's own (MESSAGE, PRIORITY, _PID, ...)
JOURNAL_FIELDS = {"job": "JOB_ID", "worker": "WORKER", "database": "DATABASE", "tool": "TOOL", "target": "TARGET"}
SYSLOG_IDENTIFIER = "pggit-supervisor"
DESTINATIONS = ("auto", "journal", "stderr")


class Fields(str):
    """Rendered ` key=value` text that remembers its values across `+` with plain strings."""

    values: Mapping[str, Any] = {}

    @classmethod
    def of(cls, text: str, values: Mapping[str, Any]) -> Fields:
        made = cls(text)
        made.values = dict(values)
        return made

    def __add__(self, other: str) -> Fields:
        return Fields.of(str(self) + other, {**self.values, **getattr(other, "values", {})})

    def __radd__(self, other: str) -> Fields:
        return Fields.of(other + str(self), {**getattr(other, "values", {}), **self.values})


def fields(**values: Any) -> Fields:
    """' job=... worker=...' with None values left out and spaces in values quoted."""
    parts = []
    kept = {key: value for key, value in values.items() if value is not None}
    for key, value in kept.items():
        text = str(value)
        parts.append(f"{key}={text!r}" if (" " in text or not text) else f"{key}={text}")
    return Fields.of((" " + " ".join(parts)) if parts else "", kept)


def _journal_name(key: str) -> str:
    return JOURNAL_FIELDS.get(key) or "PGGIT_" + re.sub(r"[^A-Z0-9_]", "_", key.upper())


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """The journal fields of one record: the fields() its message carries, then this
    process's context (a worker's database) where the message names none of its own."""
    values: dict[str, Any] = dict(_context)
    values.update(getattr(record.msg, "values", {}))
    return {_journal_name(key): str(value) for key, value in values.items() if value is not None}


class _ContextFilter(logging.Filter):
    """Adds `context` to each record: the fields set_context gave, or nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # a line that already names the field keeps its own
        record.context = fields(**{key: value for key, value in _context.items() if f" {key}=" not in message})
        return True


class _JournalFieldsFilter(logging.Filter):
    """Sets the journal fields as upper-case attributes of the record: JournalHandler sends
    a record's attributes as fields (journald keeps the upper-case ones)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in journal_fields(record).items():
            setattr(record, name, value)
        return True


def set_context(**values: Any) -> None:
    """Fields every later line of this process ends with; a worker sets its database, so that
    whatever it logs (a job, a slot, a lost connection) names the database it serves."""
    _context.clear()
    _context.update({key: value for key, value in values.items() if value is not None})


def use_journal(destination: str, environ: Mapping[str, str]) -> bool:
    """journal: always (if python3-systemd is missing, stderr with a warning); auto: when
    systemd started us (it sets JOURNAL_STREAM for a unit's stderr) and the module is there."""
    if destination == "stderr":
        return False
    if destination == "journal":
        return True
    return bool(environ.get("JOURNAL_STREAM")) and JournalHandler is not None


def setup(level: str, destination: str = "auto") -> None:
    handler: logging.Handler
    journal = use_journal(destination, os.environ)
    if journal and JournalHandler is not None:
        handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
        # the journal has the time, the priority and the pid of each entry
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s%(context)s"))
        handler.addFilter(_JournalFieldsFilter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        # journald adds its own timestamp; a terminal user still wants one
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s%(context)s")
        )
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if journal and JournalHandler is None:
        logging.getLogger("pggit.log").warning(
            "log_destination is journal but python3-systemd is not installed: logging to stderr"
        )
