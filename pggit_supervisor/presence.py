"""A worker's own row in pggit.backup_workers (schema/019; issue 11): who it is, that it is alive,
which job it runs. `status` tells a dead worker by its silence, so the row is refreshed every
few seconds from the worker's beat, and marked stopped on an orderly exit. The running job is
recorded only once it has run JOB_RECORD_SECONDS, and the end of a job only if its start was
recorded: a no-op job then costs no presence round trip at all (issue 12: two of its five).
Recording is best effort: a refused or failed call is logged and tried again later, never a
reason to stop the worker or its job."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import psycopg2

from .errors import one_line
from .log import fields
from .queue import Queue

# Seconds between two records of a worker (worker_silence, which `status` compares the age of
# the newest one with, is minutes); after a failed record the next try waits RETRY_SECONDS.
INTERVAL_SECONDS = 5.0
RETRY_SECONDS = 60.0
# a job that runs longer than this is named in the worker's row (at a beat, which comes about
# every second while a tool runs); a shorter one never is, and its row shows the worker idle
JOB_RECORD_SECONDS = 1.0

log = logging.getLogger("pggit.worker")


class Presence:
    def __init__(self, name: str, database: str, tools: Sequence[str]) -> None:
        self.name = name
        self.database = database
        self.tools = tuple(tools)
        self.machine = socket.gethostname()
        self.started_at = datetime.now(timezone.utc)
        self.job_id: str | None = None
        self.recorded_job: str | None = None  # what the row says this worker runs
        self.next_record = 0.0

    def running(self, job_id: str | None) -> None:
        """The job this worker now runs (None: idle again). A job is recorded at a beat once it
        has run JOB_RECORD_SECONDS; the end of one the row names, at the next beat."""
        self.job_id = job_id
        if job_id is not None:
            self.next_record = min(self.next_record, time.monotonic() + JOB_RECORD_SECONDS)
        elif self.recorded_job is not None:
            self.next_record = 0.0

    def record_if_due(self, queue: Queue | None) -> None:
        if queue is None or queue.conn.closed or time.monotonic() < self.next_record:
            return
        self.next_record = time.monotonic() + INTERVAL_SECONDS
        try:
            queue.record_worker(self.name, self.machine, self.database, self.tools, self.started_at, self.job_id)
            self.recorded_job = self.job_id
        except psycopg2.Error as exc:
            self.next_record = time.monotonic() + RETRY_SECONDS
            log.warning(
                "could not record this worker in pggit.backup_workers"
                + fields(worker=self.name, database=self.database, retry_in=f"{RETRY_SECONDS:g}s", error=one_line(exc))
            )

    def stopped(self, queue: Queue | None) -> None:
        """An orderly exit: the row says the worker stopped, not that it went silent."""
        if queue is None or queue.conn.closed:
            return
        try:
            queue.record_worker_stopped(self.name)
        except psycopg2.Error as exc:
            log.warning(
                "could not record this worker's stop"
                + fields(worker=self.name, database=self.database, error=one_line(exc))
            )
