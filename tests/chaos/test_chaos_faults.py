"""Faults the soak cannot aim at precisely, each on its own: PostgreSQL unreachable when the
supervisor starts, the backup directory's disk full, the tool binary missing, and a reload that
removes the tool of a running job."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest
import yaml

from helpers.cluster import IS_ROOT, Cluster
from helpers.db import scalar
from helpers.processes import wait_until
from helpers.service import Service, job_row, pids_of, queue_fake, wait_for_state
from helpers.session import FAKE_TOOL
from pggit_supervisor import schema


class NotifySocket:
    """A NOTIFY_SOCKET of the test's own: what the supervisor tells systemd, with arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def receive_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                pass

    def kinds(self) -> list[str]:
        return [text.splitlines()[0].split("=")[0] for _, text in self.messages]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def own_cluster():
    cluster = Cluster()
    cluster.remove_when_this_process_ends()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def services(tmp_path):
    made: list[Service] = []

    def make(dsn: str, **settings) -> Service:
        made.append(Service(tmp_path, dsn, **settings))
        return made[-1]

    yield make
    for service in made:
        service.cleanup()


def connect(dsn: str):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def test_postgresql_unreachable_at_start_is_waited_out_and_ready_comes_once_it_can_work(
    own_cluster, services, tmp_path
):
    own_cluster.start()
    schema.install(own_cluster.dsn, log=lambda *_: None)
    own_cluster.stop()
    notify = NotifySocket(tmp_path / "notify.sock")
    service = services(own_cluster.dsn, workers=2)
    service.start(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        notify.receive_for(4)
        assert service.proc.poll() is None, "the supervisor waits for the database instead of exiting"
        service.wait_for_log("cannot connect to the queue database", count=2)
        kinds = notify.kinds()
        assert "READY" not in kinds, f"READY before the database could be reached: {notify.messages}"
        # systemd's watchdog (WatchdogSec=1 here) would fire after 1 s without a ping: waiting for
        # the database in an orderly way keeps pinging, at every half of it
        pings = [when for (when, text), kind in zip(notify.messages, kinds, strict=True) if kind == "WATCHDOG"]
        assert len(pings) >= 6 and max(b - a for a, b in zip(pings, pings[1:], strict=False)) < 1.0, pings
        assert any("waiting for the queue database" in text for _, text in notify.messages), notify.messages
        assert "EXTEND_TIMEOUT_USEC" in kinds, "systemd's start timeout is pushed on while it waits"

        own_cluster.start()
        conn = connect(own_cluster.dsn)
        _, job_id, _ = queue_fake(conn, tmp_path, tag="after-outage")
        ready_by = time.monotonic() + 40
        while "READY" not in notify.kinds() and time.monotonic() < ready_by:
            notify.receive_for(0.5)
        assert "READY" in notify.kinds(), f"READY once the database is back: {notify.messages}"
        assert wait_for_state(conn, job_id, "completed", timeout=40)["attempts"] == 1
        conn.close()
        assert service.stop() == 0
    finally:
        notify.close()


@pytest.fixture
def tiny_disk():
    """A 1 MiB tmpfs the postgres OS user owns: the backup directory's disk, full after 1 MiB."""
    path = Path(tempfile.mkdtemp(prefix="pggit-tinydisk-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(path)], check=True)
    try:
        shutil.chown(path, "postgres", "postgres")
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        path.rmdir()


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")
def test_a_full_backup_disk_fails_the_dump_clearly_removes_the_partial_file_and_retries(make_service, db, tiny_disk):
    # about 6 MB of hex that compresses to about half: far more than the disk holds
    db.cursor().execute(
        "CREATE TABLE public.big AS SELECT md5(random()::text) || md5(random()::text) AS t"
        " FROM generate_series(1, 100000)"
    )
    service = make_service(
        workers=1,
        retry={"base_delay": 2, "max_delay": 2},
        tools={"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(tiny_disk)]}},
    ).start()
    backup_id = scalar(
        db, "SELECT pggit.backup_pg_dump('main', 'public', 'custom', %s, '{\"max_attempts\": 2}')", (str(tiny_disk),)
    )
    job_id = str(scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))
    first = wait_for_state(db, job_id, "will_retry", timeout=60)
    assert "No space left on device" in first["last_error"], first["last_error"]
    assert list(tiny_disk.iterdir()) == [], "the partial dump was removed"
    row = wait_for_state(db, job_id, "permanently_failed", timeout=60)
    assert len(service.wait_for_log("job claimed")) == 2, "the failure was retried, once (max_attempts 2)"
    assert "No space left on device" in row["last_error"], row["last_error"]
    assert list(tiny_disk.iterdir()) == [], "the partial dump of the retry was removed too"
    assert scalar(db, "SELECT status FROM pggit.backups WHERE backup_id = %s", (backup_id,)) == "failed"


def test_a_tool_binary_gone_after_start_fails_its_job_for_good_naming_the_path(make_service, db, tmp_path):
    tool = tmp_path / "bin" / "vanishing-tool"
    tool.parent.mkdir()
    shutil.copy(FAKE_TOOL, tool)
    tool.chmod(0o755)
    service = make_service(workers=1, tools={"custom": {"allowed_commands": [str(tool)], "timeout": 60}}).start()
    service.wait_for_log("worker started")
    tool.unlink()  # the package that shipped it was removed under the running service
    backup_id = scalar(
        db, "SELECT pggit.register_backup('gone', 'full', 'custom', %s, p_branch_name := 'main')", (str(tmp_path),)
    )
    job_id = str(scalar(db, "SELECT pggit.enqueue_backup_job(%s, %s, 'custom', 3)", (backup_id, str(tool))))
    row = wait_for_state(db, job_id, "permanently_failed", timeout=30)
    assert len(service.wait_for_log("job claimed")) == 1, "no retry: none can bring a missing binary back"
    assert str(tool) in row["last_error"], row["last_error"]


def test_a_reload_that_removes_a_running_jobs_tool_lets_the_job_finish(make_service, db, tmp_path):
    service = make_service(workers=1)
    service.start()
    _, job_id, pid_file = queue_fake(db, tmp_path, "--sleep", "3", tag="removed")
    wait_for_state(db, job_id, "in_progress")
    wait_until(lambda: pids_of(pid_file).get("tool"), 10, "the tool started")
    config = yaml.safe_load(service.config_path.read_text())
    config["tools"] = {"pg_dump": {}}  # custom is gone
    service.write_config(config)
    service.signal(signal.SIGHUP)
    service.wait_for_log("configuration reloaded")
    row = wait_for_state(db, job_id, "completed", timeout=30)
    assert row["attempts"] == 1 and len(pids_of(pid_file)["tool"]) == 1, "it ran once, to its end"
    # the new configuration holds from then on: another job of the removed command is refused
    _, later, _ = queue_fake(db, tmp_path, tag="after")
    assert wait_for_state(db, later, "ready", timeout=5)["attempts"] == 0
    service.wait_for_log(r"worker started worker=test/1 tools=pg_dump")
    time.sleep(1)  # a claim of the new worker would take the queued job within this second
    assert job_row(db, later)["job_state"] == "ready", "the new workers claim only the tools configured now"
    assert service.stop() == 0
