"""Every SQL statement a worker (and `status`, `retention`) runs, in this one package: the
queue's rules live in the SQL functions (schema/), these classes only call them, so a psql user
and a worker always see the same behaviour. `Queue` is one object over one connection; its
calls are grouped by area (jobs.py: claims, results, schedules, notifications; retention.py;
monitoring.py: status, metrics, archive and drill readings), records.py holds what the calls
return, fitting.py what makes a report fit the limits the SQL enforces."""

from __future__ import annotations

from psycopg2.extensions import connection

from .base import connect
from .fitting import (
    MAX_COMMAND_BYTES,
    MAX_JSON_BYTES,
    MAX_TEXT_BYTES,
    READY_CHANNEL,
    SESSION_OPTIONS,
    fit_facts,
    fit_result,
    fit_text,
    shell_command,
)
from .jobs import JobCalls
from .monitoring import MonitoringCalls
from .records import ClaimedDelivery, ClaimedJob, ClaimedMaintenance, ServerWal
from .retention import RetentionCalls


class Queue(JobCalls, RetentionCalls, MonitoringCalls):
    """The queue functions, over one worker's connection."""

    def __init__(self, conn: connection) -> None:
        self.conn = conn


__all__ = [
    "MAX_COMMAND_BYTES",
    "MAX_JSON_BYTES",
    "MAX_TEXT_BYTES",
    "READY_CHANNEL",
    "SESSION_OPTIONS",
    "ClaimedDelivery",
    "ClaimedJob",
    "ClaimedMaintenance",
    "Queue",
    "ServerWal",
    "connect",
    "fit_facts",
    "fit_result",
    "fit_text",
    "shell_command",
]
