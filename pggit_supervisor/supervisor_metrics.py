"""The supervisor's own metrics (issue 11): what only it knows, worker deaths and kills, the jobs
its workers rescued (they say so through their pipe) and the workers it runs, written as
`<metrics_textfile_dir>/pggit_supervisor_<worker_id>.prom` for node_exporter's textfile
collector (see metrics.py for why a textfile). Counters count since the supervisor started
(`pggit_supervisor_start_time_seconds`), as Prometheus counters do across a restart. Written from
the supervisor's loop, at most every metrics_interval: no thread, no socket, no database
connection (the supervisor holds none)."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from . import __version__
from .config import Config
from .log import fields

log = logging.getLogger("pggit.metrics")


@dataclass
class SupervisorMetrics:
    config: Config
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    started: float = field(default_factory=time.time)
    deaths: Counter[str] = field(default_factory=Counter)  # by database: workers that died unasked
    kills: Counter[str] = field(default_factory=Counter)  # by database: silent workers killed
    rescues: Counter[str] = field(default_factory=Counter)  # by database: jobs workers returned to the queue
    next_write: float = 0.0

    def worker_died(self, database: str) -> None:
        self.deaths[database] += 1

    def worker_killed(self, database: str) -> None:
        self.kills[database] += 1

    def jobs_rescued(self, database: str, count: int) -> None:
        self.rescues[database] += count

    def path(self) -> str | None:
        directory = self.config.metrics_textfile_dir
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.config.worker_id)
        return None if directory is None else os.path.join(directory, f"pggit_supervisor_{name}.prom")

    def write_if_due(self, running: Iterable[str]) -> bool:
        """`running`: the database of each live worker. True if the file was written."""
        path = self.path()
        if path is None or self.clock() < self.next_write:
            return False
        self.next_write = self.clock() + self.config.metrics_interval
        registry = CollectorRegistry()
        host = self.config.worker_id
        Gauge("pggit_supervisor_info", "the running supervisor", ["host", "version"], registry=registry).labels(
            host, __version__
        ).set(1)
        Gauge("pggit_supervisor_start_time_seconds", "when it started", ["host"], registry=registry).labels(host).set(
            self.started
        )
        Gauge(
            "pggit_supervisor_written_timestamp_seconds", "when this file was written", ["host"], registry=registry
        ).labels(host).set(self.wall())
        workers = Gauge("pggit_supervisor_workers", "worker processes running", ["host", "database"], registry=registry)
        deaths = Gauge(
            "pggit_worker_restarts_total",
            "workers that died unasked and were restarted",
            ["host", "database"],
            registry=registry,
        )
        kills = Gauge(
            "pggit_worker_kills_total",
            "workers killed for silence (worker_timeout)",
            ["host", "database"],
            registry=registry,
        )
        rescues = Gauge(
            "pggit_lease_rescues_total",
            "jobs this host's workers returned to the queue: leases expired, or a dead worker's",
            ["host", "database"],
            registry=registry,
        )
        alive = Counter(running)
        for database in (d.name for d in self.config.served()):
            workers.labels(host, database).set(alive.get(database, 0))
            deaths.labels(host, database).set(self.deaths.get(database, 0))
            kills.labels(host, database).set(self.kills.get(database, 0))
            rescues.labels(host, database).set(self.rescues.get(database, 0))
        try:
            write_to_textfile(path, registry)
        except OSError as exc:
            log.warning(f"could not write the supervisor's metrics file: {exc}" + fields(path=path))
            return False
        return True


__all__ = ["SupervisorMetrics"]
