"""What every figure needs: a throwaway cluster of the run's own (never the machine's 5432
server), a database with the schema installed, a real supervisor process, queued custom jobs,
a stamp tool that records when it started, and the row every figure prints.

Each figure is a module with `run(ctx) -> list[Row]`; bench/run.py prints them as one table.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from helpers.cluster import BIN, Cluster  # noqa: E402
from pggit_supervisor import schema  # noqa: E402

CLI = [sys.executable, "-m", "pggit_supervisor"]
PGBENCH = str(BIN / "pgbench")

# A tool that writes CLOCK_REALTIME (ns) to the file named by its first argument, then exits:
# "tool start" for the latency figures is the moment a tool's own code runs, measured in C so no
# interpreter start-up is counted in it.
_STAMP_C = r"""
#include <stdio.h>
#include <time.h>
int main(int argc, char **argv) {
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
    if (argc > 1) { FILE *f = fopen(argv[1], "w"); if (!f) return 1;
        fprintf(f, "%lld.%09ld\n", (long long)ts.tv_sec, ts.tv_nsec); fclose(f); }
    return 0;
}
"""


@dataclass(frozen=True)
class Row:
    """One line of the table: a measurement against the baseline of the same run.

    `ratio` is measured/baseline (or the figure's own ratio, e.g. measured/lease); `goal` is the
    bar and `higher_is_better` says which side of it passes; goal None is reported only."""

    figure: str
    what: str
    baseline: str
    measured: str
    ratio: float | None
    goal: float | None = None
    higher_is_better: bool = False

    @property
    def ok(self) -> str:
        if self.goal is None or self.ratio is None:
            return "-"
        met = self.ratio >= self.goal if self.higher_is_better else self.ratio <= self.goal
        return "yes" if met else "NO"


@dataclass
class Context:
    """The run's cluster, scratch directory and size knobs (quick or full)."""

    quick: bool
    cluster: Cluster
    scratch: Path
    stamp_tool: str
    databases: list[str] = field(default_factory=list)

    def new_database(self, prefix: str = "bench") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with admin(self.cluster.dsn) as conn:
            conn.cursor().execute(f'CREATE DATABASE "{name}"')
        schema.install(self.cluster.dsn_for(name), log=lambda *_: None)
        self.databases.append(name)
        return name

    def dsn(self, dbname: str) -> str:
        return self.cluster.dsn_for(dbname)

    def directory(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.scratch))
        os.chmod(path, 0o777)
        return path


class admin:
    """An autocommit connection as a context manager (closed at the end)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def __enter__(self):
        return self.conn

    def __exit__(self, *_: Any) -> None:
        self.conn.close()


def start_context(quick: bool) -> Context:
    scratch = Path(tempfile.mkdtemp(prefix="pggit-bench-", dir="/tmp"))
    os.chmod(scratch, 0o755)
    cluster = Cluster("max_connections = 200\nshared_buffers = 256MB\n")
    cluster.start()
    cluster.remove_when_this_process_ends()
    source = scratch / "stamp.c"
    source.write_text(_STAMP_C)
    stamp = scratch / "stamp"
    subprocess.run(["gcc", "-O2", "-o", str(stamp), str(source)], check=True)
    return Context(quick=quick, cluster=cluster, scratch=scratch, stamp_tool=str(stamp))


def end_context(ctx: Context) -> None:
    ctx.cluster.remove()
    shutil.rmtree(ctx.scratch, ignore_errors=True)


class Supervisor:
    """`pggit-supervisor run` on a config of the figure's own, in its own session."""

    def __init__(self, ctx: Context, name: str, **settings: Any) -> None:
        self.dir = ctx.directory(name)
        self.config_path = self.dir / "supervisor.yaml"
        self.log_path = self.dir / "supervisor.log"
        config: dict[str, Any] = {
            "worker_id": name,
            "workers": 1,
            "poll_interval": 10,
            "heartbeat_interval": 1,
            "lease_seconds": 5,
            "shutdown_timeout": 5,
            "kill_grace": 1,
            "log_level": "INFO",
            "log_destination": "stderr",
            "tools": {"custom": {"allowed_commands": ["/bin/true", "/bin/sleep", ctx.stamp_tool], "timeout": 600}},
        }
        config.update(settings)
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Supervisor:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, "run", "-c", str(self.config_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 30) -> None:
        regex = re.compile(pattern)
        wait_until(lambda: len(regex.findall(self.log())) >= count, timeout, f"/{pattern}/ x{count}\n{self.log()}")

    def workers(self) -> list[psutil.Process]:
        assert self.proc is not None
        found = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                if "pggit_supervisor" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                pass
        return found

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def kill_host(self) -> None:
        """Host loss: the supervisor, its workers and their tools die at once."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def enqueue_custom(conn, command: str, count: int = 1, max_attempts: int = 1) -> list[str]:
    """`count` custom jobs of `command` in one transaction; their job ids."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT pggit.enqueue_backup_job(
                   pggit.register_backup('bench-' || gen_random_uuid(), 'full', 'custom', '/tmp',
                                         p_branch_name := 'main'),
                   %s, 'custom', %s)::text
                 FROM generate_series(1, %s)""",
            (command, max_attempts, count),
        )
        return [row[0] for row in cur.fetchall()]


def scalar(conn, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(pct) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"
