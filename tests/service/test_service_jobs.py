"""The service running jobs for real: draining, NOTIFY wake-up, timeouts, cancellation, a
PostgreSQL restart mid-job, and the systemd notification protocol."""

import http.server
import json
import socket
import threading
import time
from collections import Counter
from functools import partial

import psycopg2

from helpers.cluster import Cluster
from helpers.db import scalar
from helpers.processes import gone, wait_until
from helpers.service import pids_of, queue_fake, wait_for_state
from helpers.session import FAKE_TOOL
from pggit_supervisor import schema


def test_many_jobs_are_drained_by_several_workers_and_none_runs_twice(make_service, db, tmp_path):
    jobs = [queue_fake(db, tmp_path, "--sleep", "0.05", tag=f"j{i}") for i in range(30)]
    service = make_service(workers=3).start()
    for _, job_id, _ in jobs:
        wait_for_state(db, job_id, "completed", timeout=60)
    runs = Counter(len(pids_of(pid_file).get("tool", [])) for _, _, pid_file in jobs)
    assert runs == {1: 30}, "every job ran exactly once"
    workers = {line.split("worker=")[1].split()[0] for line in service.wait_for_log("job claimed", count=30)}
    assert len(workers) >= 2, f"the work was shared: {workers}"
    assert scalar(db, "SELECT count(*) FROM pggit.backups WHERE status = 'completed'") == 30
    assert service.stop() == 0


def test_notify_wakes_an_idle_worker_long_before_the_poll(make_service, db, tmp_path):
    service = make_service(workers=1, poll_interval=60).start()
    service.wait_for_log("worker started")
    time.sleep(1)  # the worker is now waiting on LISTEN, with 59 s of poll left
    queued = time.monotonic()
    _, job_id, _ = queue_fake(db, tmp_path, tag="notify")
    wait_for_state(db, job_id, "completed", timeout=10)
    assert time.monotonic() - queued < 5, "picked up by NOTIFY, not by the 60 s poll"


def test_timeout_kills_the_tool_its_child_and_its_setsid_grandchild(make_service, db, tmp_path):
    make_service(workers=1, tools={"custom": {"allowed_commands": [FAKE_TOOL], "timeout": 2}}).start()
    _, job_id, pid_file = queue_fake(
        db, tmp_path, "--sleep", "600", "--spawn-child", "--spawn-grandchild-setsid", "--ignore-term", tag="slow"
    )
    row = wait_for_state(db, job_id, "will_retry", timeout=20)
    assert row["last_error"].startswith("timed out after 2 s")
    pids = pids_of(pid_file)
    assert set(pids) == {"tool", "child", "grandchild"}
    for pid in sum(pids.values(), []):
        assert wait_until(partial(gone, pid), 5, f"pid {pid} gone")


def test_job_timeout_option_is_capped_by_the_tool_maximum(make_service, db, tmp_path):
    make_service(workers=1, tools={"custom": {"allowed_commands": [FAKE_TOOL], "timeout": 2}}).start()
    _, job_id, _ = queue_fake(db, tmp_path, "--sleep", "600", tag="capped", metadata='{"timeout_seconds": 3600}')
    assert wait_for_state(db, job_id, "will_retry", timeout=20)["last_error"].startswith("timed out after 2 s")


def test_cancelling_a_running_job_with_the_guides_update_stops_its_tool(make_service, db, tmp_path):
    service = make_service(workers=1).start()
    backup_id, job_id, pid_file = queue_fake(db, tmp_path, "--sleep", "600", "--spawn-child", tag="cancel")
    wait_for_state(db, job_id, "in_progress")
    tool_pids = wait_until(
        lambda: pids_of(pid_file).get("child") and sum(pids_of(pid_file).values(), []), 10, "tool up"
    )
    cancelled = time.monotonic()
    db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (job_id,))
    for pid in tool_pids:
        wait_until(partial(gone, pid), 5, f"tool pid {pid} gone")
    # one heartbeat (0.5 s) plus the kill grace (1 s), with room for a slow machine
    assert time.monotonic() - cancelled < 4
    service.wait_for_log("job stopped: cancelled or no longer held by this worker; nothing reported")
    assert scalar(db, "SELECT status FROM pggit.backups WHERE backup_id = %s", (backup_id,)) == "cancelled"
    assert scalar(db, "SELECT status FROM pggit.backup_jobs WHERE job_id = %s", (job_id,)) == "cancelled"


def test_failed_tool_is_retried_with_backoff_and_a_bad_command_fails_for_good(make_service, db, tmp_path):
    make_service(workers=1, retry={"base_delay": 60, "max_delay": 600}).start()
    _, failing, _ = queue_fake(db, tmp_path, "--exit", "3", tag="exit3")
    row = wait_for_state(db, failing, "will_retry")
    assert "exit 3" in row["last_error"]
    assert (
        55
        <= scalar(
            db, "SELECT extract(epoch FROM next_retry_at - now()) FROM pggit.backup_jobs WHERE job_id = %s", (failing,)
        )
        <= 60
    )
    backup_id = scalar(db, "SELECT pggit.register_backup('x', 'full', 'custom', '/x', p_branch_name := 'main')")
    job_id = str(scalar(db, "SELECT pggit.enqueue_backup_job(%s, '/bin/rm -rf /tmp/nothing', 'custom')", (backup_id,)))
    row = wait_for_state(db, job_id, "permanently_failed")
    assert row["last_error"].startswith("invalid job: command not allowed by configuration: /bin/rm")
    assert row["attempts"] == 1 or row["attempts"] == row["max_attempts"]


def test_result_of_a_job_that_ends_while_postgresql_is_down_is_recorded_once_it_is_back(make_service, tmp_path):
    cluster = Cluster().start()
    try:
        schema.install(cluster.dsn, log=lambda *_: None)
        conn = psycopg2.connect(cluster.dsn)
        conn.autocommit = True
        service = make_service(dsn=cluster.dsn, workers=1, lease_seconds=30).start()
        _, job_id, pid_file = queue_fake(conn, tmp_path, "--sleep", "2", tag="restart")
        wait_for_state(conn, job_id, "in_progress")
        conn.close()
        cluster.stop()  # drops every connection; the tool keeps running and ends while the server is down
        tool = wait_until(lambda: pids_of(pid_file).get("tool"), 10, "tool started")[0]
        wait_until(lambda: gone(tool), 10, "tool finished")
        time.sleep(1)
        cluster.start()
        conn = psycopg2.connect(cluster.dsn)
        conn.autocommit = True
        row = wait_for_state(conn, job_id, "completed", timeout=40)
        assert row["attempts"] == 1
        assert len(pids_of(pid_file)["tool"]) == 1, "the tool ran once"
        service.wait_for_log("reconnected to the queue database")
        assert len(service.wait_for_log("job completed")) == 1
        assert "cannot connect to the queue database" in service.log(), "the outage was seen and waited out"
        conn.close()
        assert service.stop() == 0
    finally:
        cluster.remove()


def test_webhook_hears_about_a_completed_job(make_service, db, tmp_path):
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # 127.0.0.1 is loopback: posted to only when listed itself
        make_service(workers=1, notifications={"allowed_hosts": ["127.0.0.1"]}).start()
        url = f"http://127.0.0.1:{server.server_port}/hook"
        _, job_id, _ = queue_fake(
            db, tmp_path, tag="hook", metadata=json.dumps({"webhook_url": url, "notify_on_success": True})
        )
        wait_for_state(db, job_id, "completed")
        wait_until(lambda: received, 10, "the webhook call")
        assert received[0]["job_id"] == job_id and received[0]["status"] == "completed"
    finally:
        server.shutdown()


def test_systemd_hears_ready_then_watchdog_pings_then_stopping_last(make_service, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.settimeout(0.2)
    service = make_service(workers=2).start(env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000"})
    messages = []

    def receive_for(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                pass

    receive_for(3)
    service.signal(15)
    receive_for(2)
    assert service.proc.wait(20) == 0
    listener.close()
    kinds = [m.splitlines()[0].split("=")[0] for m in messages]
    # READY once a worker has reached the database; before it only the start-up wait's messages
    assert "READY" in kinds, messages
    assert set(kinds[: kinds.index("READY")]) <= {"WATCHDOG", "EXTEND_TIMEOUT_USEC", "STATUS"}, messages
    assert kinds.count("WATCHDOG") >= 4, "pinged every half of WATCHDOG_USEC"
    assert kinds[-1] == "STOPPING", messages
    assert any("2/2 workers alive" in m for m in messages), "STATUS reports the workers"


def test_what_a_finished_tool_left_running_ends_with_its_job(make_service, db, tmp_path):
    """A tool that exits leaving a child and a setsid grandchild behind (a daemon it started):
    the worker, their subreaper, ends them once the job is recorded."""
    service = make_service(workers=1).start()
    _, job_id, pid_file = queue_fake(
        db, tmp_path, "--sleep", "0.5", "--spawn-child", "--spawn-grandchild-setsid", tag="daemon"
    )
    wait_for_state(db, job_id, "completed")
    pids = pids_of(pid_file)
    assert set(pids) == {"tool", "child", "grandchild"}
    for pid in sum(pids.values(), []):
        wait_until(partial(gone, pid), 5, f"pid {pid} gone")
    service.wait_for_log("ended a process the tool left behind")


def test_supervisor_idles_while_it_waits_for_a_job_during_shutdown(make_service, db, tmp_path):
    import psutil

    service = make_service(workers=1, shutdown_timeout=30).start(
        env={"WATCHDOG_USEC": "1000000", "NOTIFY_SOCKET": str(tmp_path / "none")}
    )
    _, job_id, _ = queue_fake(db, tmp_path, "--sleep", "600", tag="long")
    wait_for_state(db, job_id, "in_progress")
    service.signal(15)
    time.sleep(0.5)
    supervisor = psutil.Process(service.proc.pid)
    before = sum(supervisor.cpu_times()[:2])
    time.sleep(2)
    assert sum(supervisor.cpu_times()[:2]) - before < 0.5, "no busy loop while running jobs finish"
