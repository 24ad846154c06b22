"""The pieces of the chaos soak (tests/chaos/): a webhook receiver that can be taken down and
brought back on the same port, the seeded plan of jobs and faults, a database handle that
outlives server restarts, and what the fake tool's run files say each job's tool did.

Kept apart from the test so the soak reads as plan, run, check; a failing check names the seed,
so `PGGIT_CHAOS_SEED=... make chaos` replays the same plan (the moments the faults hit are the
same; what the processes are doing at that moment is not, so a replay is close, not exact).
"""

from __future__ import annotations

import http.server
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras

SEED = int(os.environ.get("PGGIT_CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))
JOBS = int(os.environ.get("PGGIT_CHAOS_JOBS") or 150)
SECONDS = float(os.environ.get("PGGIT_CHAOS_SECONDS") or 50)

# kind -> (share of the jobs, fake tool arguments, max_attempts, job metadata)
JOB_KINDS: dict[str, tuple[float, list[str], int, dict[str, Any]]] = {
    "ok": (0.62, ["--sleep", "0.1"], 6, {}),
    "slow": (0.12, ["--sleep", "1.5"], 6, {}),
    "fail": (0.12, ["--exit", "3"], 3, {}),
    "timeout": (0.06, ["--sleep", "60"], 2, {"timeout_seconds": 1}),
    "cancel": (0.08, ["--sleep", "20"], 6, {}),
}
# fault -> weight in the plan
FAULTS = {
    "kill_worker": 4,
    "kill_tool": 4,
    "host_loss": 2,
    "sigterm_restart": 2,
    "sighup_workers": 2,
    "pg_restart_fast": 1,
    "pg_restart_immediate": 1,
    "connection_cut": 2,
    "webhook_down": 2,
}


@dataclass(frozen=True)
class PlannedJob:
    tag: str
    kind: str
    database: str
    at: float  # seconds after the start


@dataclass(frozen=True)
class PlannedFault:
    kind: str
    at: float
    pick: int  # which host / process, modulo what exists at that moment
    value: float  # the fault's own number: how long down, how many workers


@dataclass
class Plan:
    seed: int
    jobs: list[PlannedJob] = field(default_factory=list)
    faults: list[PlannedFault] = field(default_factory=list)


def make_plan(seed: int, jobs: int, seconds: float, databases: list[str]) -> Plan:
    rng = random.Random(seed)
    kinds, shares = list(JOB_KINDS), [share for share, *_ in JOB_KINDS.values()]
    plan = Plan(seed)
    for n in range(jobs):
        kind = rng.choices(kinds, shares)[0]
        plan.jobs.append(PlannedJob(f"j{n:05d}", kind, rng.choice(databases), rng.uniform(0, seconds * 0.8)))
    names, weights = list(FAULTS), list(FAULTS.values())
    moment = rng.uniform(0.5, 2.5)
    while moment < seconds:
        plan.faults.append(PlannedFault(rng.choices(names, weights)[0], moment, rng.randrange(1 << 30), rng.random()))
        moment += rng.uniform(0.5, 4.0)
    plan.jobs.sort(key=lambda job: job.at)
    return plan


def replay_hint(seed: int) -> str:
    return f"replay: PGGIT_CHAOS_SEED={seed} PGGIT_CHAOS_JOBS={JOBS} PGGIT_CHAOS_SECONDS={SECONDS:g} make chaos"


class Receiver:
    """A webhook endpoint on a fixed port of 127.0.0.1 answering 204, counting each event id; down()
    closes the socket (connections are refused), up() listens on the same port again."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server: http.server.ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.received[self.headers.get("X-Pggit-Event-Id", "")] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        if self.server is None:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
            self.server.daemon_threads = True
            self.port = self.server.server_port
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def close(self) -> None:
        self.down()


class Db:
    """Queries on one database of the chaos cluster, reconnecting through restarts and cuts."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: Any = None

    def rows(self, sql: str, args: tuple = (), timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg2.connect(self.dsn, application_name="chaos-harness", connect_timeout=5)
                    self.conn.autocommit = True
                with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    cur.execute(sql, args)
                    return [dict(row) for row in cur.fetchall()] if cur.description else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def value(self, sql: str, args: tuple = ()) -> Any:
        rows = self.rows(sql, args)
        return next(iter(rows[0].values())) if rows else None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass(frozen=True)
class Run:
    pid: int
    started: float
    exit_code: int | None  # None: killed (by a fault, a timeout or a cancel) before it exited
    ended: float | None


def runs_of(path: Path) -> list[Run]:
    """The runs the fake tool recorded (--write-runs), in the order they started."""
    starts: dict[int, float] = {}
    ends: dict[int, tuple[int, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts[0] == "start":
                starts[int(parts[1])] = float(parts[2])
            elif parts[0] == "exit" and len(parts) == 4:
                ends[int(parts[2])] = (int(parts[1]), float(parts[3]))
    found = [Run(pid, started, *(ends.get(pid) or (None, None))) for pid, started in starts.items()]
    return sorted(found, key=lambda run: run.started)


def overlapping(runs: list[Run]) -> bool:
    """Two runs of one job at once: one started before another one's recorded exit."""
    return any(
        other.started < run.ended and other.started >= run.started
        for run in runs
        if run.ended is not None
        for other in runs
        if other is not run
    )
