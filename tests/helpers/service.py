"""A real supervisor process for tests: config in a temp dir, stderr captured to a file, and
helpers to queue fake-tool jobs and wait for what the log and the database say."""

from __future__ import annotations

import os
import re
import signal as signals  # the Service.signal method shadows the module inside the class
import subprocess
from pathlib import Path
from typing import Any

import psutil
import yaml

from helpers import CLI, ROOT
from helpers.db import query, scalar
from helpers.processes import wait_until
from helpers.session import FAKE_TOOL


class Service:
    """`pggit-supervisor run -c CONFIG` as a subprocess in its own session."""

    def __init__(self, tmp_path: Path, dsn: str | None, **settings: Any) -> None:
        self.dir = tmp_path
        self.config_path = tmp_path / "supervisor.yaml"
        self.log_path = tmp_path / "supervisor.log"
        config = {
            "dsn": dsn,
            "worker_id": "test",
            "workers": 2,
            "poll_interval": 5,
            "heartbeat_interval": 0.5,
            "lease_seconds": 5,
            "shutdown_timeout": 10,
            "kill_grace": 1,
            "worker_timeout": 10,
            "log_level": "INFO",
            # the tests read the log from stderr, also when they run under systemd (JOURNAL_STREAM)
            "log_destination": "stderr",
            "tools": {"custom": {"allowed_commands": [FAKE_TOOL], "timeout": 600}},
        }
        config.update(settings)
        if dsn is None:  # the settings list `databases` instead
            del config["dsn"]
        self.write_config(config)
        self.proc: subprocess.Popen | None = None

    def write_config(self, config: dict) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self, env: dict[str, str] | None = None, args: list[str] | None = None) -> Service:
        log = open(self.log_path, "ab")
        command = args or [*CLI, "run", "-c", str(self.config_path)]
        self.proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 15, count: int = 1) -> list[str]:
        regex = re.compile(pattern)

        def found():
            lines = [line for line in self.log().splitlines() if regex.search(line)]
            return lines if len(lines) >= count else None

        return wait_until(found, timeout, f"log line /{pattern}/ x{count}\n--- log ---\n{self.log()}")

    def workers(self) -> list[psutil.Process]:
        """The supervisor's live worker processes. One that exited a moment ago is a zombie until the
        supervisor reaps it, and its cmdline can no longer be read: it is not a worker any more."""
        found = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                if "pggit_supervisor" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:  # ZombieProcess is one
                pass
        return found

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def stop(self, signum: int = signals.SIGTERM, timeout: float = 30) -> int:
        self.signal(signum)
        return self.proc.wait(timeout)

    def command(self, name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`pggit-supervisor NAME -c CONFIG ARGS` on this service's config, run to its end."""
        return subprocess.run(
            [*CLI, name, "-c", str(self.config_path), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
        )

    def cleanup(self) -> None:
        """Whatever a test left running: the supervisor's session, then stray tools."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signals.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        for proc in psutil.process_iter(["cmdline"]):
            if FAKE_TOOL in " ".join(proc.info["cmdline"] or []) and str(self.dir) in " ".join(
                proc.info["cmdline"] or []
            ):
                proc.kill()


def queue_fake(
    conn, tmp_path: Path, *args: str, tag: str = "job", max_attempts: int = 3, metadata: str = "{}"
) -> tuple[str, str, Path]:
    """Registers a backup and enqueues the fake tool with `args`; each run appends its pids to
    a file of its own. Returns (backup_id, job_id, pid file)."""
    pids = tmp_path / f"pids-{tag}"
    backup_id = scalar(
        conn,
        "SELECT pggit.register_backup(%s, 'full', 'custom', %s, p_branch_name := 'main')",
        (f"fake-{tag}", str(tmp_path)),
    )
    command = " ".join([FAKE_TOOL, *args, "--write-pids", str(pids)])
    job_id = scalar(
        conn, "SELECT pggit.enqueue_backup_job(%s, %s, 'custom', %s, %s)", (backup_id, command, max_attempts, metadata)
    )
    return str(backup_id), str(job_id), pids


def job_row(conn, job_id: str) -> dict:
    return query(conn, "SELECT * FROM pggit.backup_job_queue WHERE job_id = %s", (job_id,))[0]


def wait_for_state(conn, job_id: str, states: set[str] | str, timeout: float = 20) -> dict:
    wanted = {states} if isinstance(states, str) else states
    try:
        return wait_until(
            lambda: (row := job_row(conn, job_id))["job_state"] in wanted and row, timeout, f"job {job_id} in {wanted}"
        )
    except AssertionError as timed_out:  # say the state at the deadline, not the one at the start
        row = job_row(conn, job_id)
        raise AssertionError(f"{timed_out}: it is {row['job_state']}, last_error={row['last_error']!r}") from None


def pids_of(pid_file: Path) -> dict[str, list[int]]:
    """role -> pids recorded by the fake tool (one 'tool' line per run)."""
    found: dict[str, list[int]] = {}
    if pid_file.exists():
        for line in pid_file.read_text().splitlines():
            role, pid = line.split()
            found.setdefault(role, []).append(int(pid))
    return found
