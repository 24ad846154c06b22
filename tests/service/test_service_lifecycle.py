"""The whole service as an operator runs it: a real supervisor, real workers, real tool trees.

Each test starts `pggit-supervisor run` (or the guide's listener) against a fresh database,
drives it with signals and kills, and checks what the queue, the log and the process table say.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from helpers import ROOT
from helpers.db import query, scalar
from helpers.processes import gone, wait_until
from helpers.service import Service, job_row, pids_of, queue_fake, wait_for_state
from helpers.session import FAKE_TOOL, PG_HOST, PG_PORT, PG_USER

LISTENER = "import sys; from pggit_supervisor.cli import listener_main; sys.exit(listener_main())"
TREE = ("--spawn-child", "--spawn-grandchild-setsid")  # a tool, its child, and a setsid grandchild
SPAWNED = re.compile(r"worker spawned worker=(\S+) pid=(\d+)")
# A tool whose helper daemonizes (double fork + setsid), as real tools' helpers do:
# tool -> child (the tool's group) -> daemon (its own session) -> daemon-child. All sleep.
DAEMONIZING_TOOL = """#!{python}
import os, sys, time

def record(role):
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{{role}} {{os.getpid()}}\\n".encode())
    os.close(fd)

role = "tool"
if os.fork() == 0:
    role = "child"
    if os.fork() == 0:
        os.setsid()
        role = "daemon"
        if os.fork() == 0:
            role = "daemon-child"
record(role)
while True:
    time.sleep(3600)
"""


@pytest.fixture
def make_service(tmp_path, dsn):
    """Builds Services (config overrides as keywords; `config_dsn` replaces the file's dsn)
    and kills whatever each one left running, whatever the test's outcome."""
    made: list[Service] = []

    def _make(config_dsn: str | None = None, **settings) -> Service:
        service = Service(tmp_path, config_dsn or dsn, **settings)
        made.append(service)
        return service

    yield _make
    for service in made:
        service.cleanup()
    for proc in psutil.process_iter(["cmdline"]):  # tools that escaped the supervisor's session
        if proc.pid != os.getpid() and f"{tmp_path}/" in " ".join(proc.info["cmdline"] or []):
            proc.kill()


# -- helpers ----------------------------------------------------------------------------------


def wait_for_run(
    pid_file: Path, roles: tuple[str, ...] = ("tool",), runs: int = 1, timeout: float = 15
) -> dict[str, list[int]]:
    """The pid file once `runs` runs of the fake tool have recorded every role in `roles`."""
    return wait_until(
        lambda: (found := pids_of(pid_file)) and all(len(found.get(r, [])) >= runs for r in roles) and found,
        timeout,
        f"{runs} run(s) recording {roles} in {pid_file}",
    )


def wait_gone(pids: list[int], timeout: float, what: str) -> None:
    wait_until(
        lambda: all(gone(pid) for pid in pids),
        timeout,
        f"{what} to be gone; alive: {[pid for pid in pids if not gone(pid)]}",
    )


def spawned(service: Service) -> list[tuple[str, int]]:
    """(worker name, pid) of every 'worker spawned' line, in order."""
    return [(m[1], int(m[2])) for m in SPAWNED.finditer(service.log())]


def wait_for_workers_started(service: Service, count: int, worker_id: str = "test") -> None:
    for slot in range(1, count + 1):
        service.wait_for_log(rf"worker started worker={re.escape(worker_id)}/{slot}\b")


def live_worker_pids(service: Service) -> set[int]:
    return {p.pid for p in service.workers() if not gone(p.pid)}


def tool_processes(tmp_path: Path) -> list[int]:
    """Live fake-tool processes of this test (their command line names the test's temp dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if FAKE_TOOL in cmdline and f"{tmp_path}/" in cmdline and not gone(proc.pid):
            found.append(proc.pid)
    return found


def pggit_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGGIT_")}
    return subprocess.run(
        [sys.executable, "-m", "pggit_supervisor", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- a worker or the supervisor dies ------------------------------------------------------------


def test_killed_busy_worker_job_is_requeued_at_once_and_completed_once(make_service, db, tmp_path):
    # lease 60 s: a second run within seconds cannot be the lease rescuer's doing
    service = make_service(lease_seconds=60).start()
    wait_for_workers_started(service, 2)
    _, job_id, pid_file = queue_fake(db, tmp_path, "--sleep", "3", *TREE)
    first = wait_for_run(pid_file, ("tool", "child", "grandchild"))
    first_run = [first["tool"][0], first["child"][0], first["grandchild"][0]]
    worker_pid = psutil.Process(first["tool"][0]).ppid()
    claimed = service.wait_for_log(rf"job claimed job={job_id} worker=(\S+)")[0]
    name = re.search(r"worker=(\S+)", claimed)[1]
    assert (name, worker_pid) in spawned(service), "the tool's parent is the worker that claimed the job"

    os.kill(worker_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    service.wait_for_log(rf"worker died worker={re.escape(name)} pid={worker_pid}\b.*job={job_id}")
    service.wait_for_log(rf"returned a dead worker's job to the queue job={job_id} worker={re.escape(name)}")
    wait_for_run(pid_file, ("tool",), runs=2, timeout=5)
    assert time.monotonic() - killed_at < 5, "the job went back to the queue at once, not by its 60 s lease"

    row = wait_for_state(db, job_id, {"completed", "will_retry", "permanently_failed"}, timeout=20)
    assert row["job_state"] == "completed", row
    assert row["attempts"] == 2
    runs = pids_of(pid_file)
    assert len(runs["tool"]) == 2 and runs["tool"][0] == first["tool"][0]
    assert len(re.findall(rf"job completed job={job_id}\b", service.log())) == 1
    # nothing of the killed run survives: its tool, the tool's child, nor the setsid grandchild
    wait_gone(first_run, 5, "the killed worker's tool tree (tool, child, grandchild)")


def test_killed_worker_leaves_no_daemonized_tool_process_behind(make_service, db, tmp_path):
    tool = tmp_path / "daemonizing_tool.py"
    tool.write_text(DAEMONIZING_TOOL.format(python=sys.executable))
    tool.chmod(0o755)
    service = make_service(lease_seconds=60, tools={"custom": {"allowed_commands": [str(tool)]}}).start()
    wait_for_workers_started(service, 2)
    pid_file = tmp_path / "pids-daemonizing"
    backup_id = scalar(
        db,
        "SELECT pggit.register_backup('daemonizing', 'full', 'custom', %s, p_branch_name := 'main')",
        (str(tmp_path),),
    )
    # one attempt: the replacement worker fails the job for good instead of running it again
    job_id = scalar(db, "SELECT pggit.enqueue_backup_job(%s, %s, 'custom', 1)", (backup_id, f"{tool} {pid_file}"))
    run = wait_for_run(pid_file, ("tool", "child", "daemon", "daemon-child"))
    tree = [pids[0] for pids in run.values()]

    os.kill(psutil.Process(run["tool"][0]).ppid(), signal.SIGKILL)
    assert wait_for_state(db, job_id, {"permanently_failed"}, timeout=5)["attempts"] == 1
    wait_gone(tree, 5, "every process of the killed worker's tool (tool, child, daemon, daemon-child)")


def test_killed_supervisor_takes_workers_and_tools_down_and_job_is_handed_back(make_service, db, tmp_path):
    service = make_service(lease_seconds=60).start()
    wait_for_workers_started(service, 2)
    _, job_id, pid_file = queue_fake(db, tmp_path, "--sleep", "60", *TREE)
    run = wait_for_run(pid_file, ("tool", "child", "grandchild"))
    wait_for_state(db, job_id, "in_progress")
    workers = sorted(live_worker_pids(service))
    assert len(workers) == 2

    service.signal(signal.SIGKILL)
    service.proc.wait(5)
    # PDEATHSIG=SIGUSR1: each worker stops its tool tree, hands its job back and exits
    wait_gone(
        workers + run["tool"] + run["child"] + run["grandchild"],
        8,
        "the workers and the tool tree of a SIGKILLed supervisor",
    )
    assert tool_processes(tmp_path) == []
    row = wait_for_state(db, job_id, "ready", timeout=5)
    assert row["attempts"] == 0, "a job handed back spends no attempt"
    assert row["worker_id"] is None
    assert re.search(rf"job handed back to the queue job={job_id} worker=test/\d released=True", service.log())


# -- stopping -----------------------------------------------------------------------------------


def test_sigterm_lets_a_short_running_job_finish_then_exits_0(make_service, db, tmp_path):
    service = make_service(shutdown_timeout=10).start()
    wait_for_workers_started(service, 2)
    _, job_id, pid_file = queue_fake(db, tmp_path, "--sleep", "2")
    wait_for_run(pid_file)
    wait_for_state(db, job_id, "in_progress")

    assert service.stop(signal.SIGTERM, timeout=15) == 0
    row = job_row(db, job_id)
    assert row["job_state"] == "completed" and row["attempts"] == 1, row
    log = service.log()
    assert re.search(rf"job completed job={job_id}\b", log)
    assert "handed back" not in log
    assert "supervisor stopped exit_code=0" in log


def test_sigterm_hands_back_a_job_longer_than_shutdown_timeout(make_service, db, tmp_path):
    service = make_service(shutdown_timeout=2, lease_seconds=60).start()
    wait_for_workers_started(service, 2)
    _, job_id, pid_file = queue_fake(db, tmp_path, "--sleep", "60", *TREE)
    run = wait_for_run(pid_file, ("tool", "child", "grandchild"))
    tree = run["tool"] + run["child"] + run["grandchild"]
    wait_for_state(db, job_id, "in_progress")

    service.signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(1.5)
    assert not any(gone(pid) for pid in tree), "the tool keeps running until shutdown_timeout"
    wait_gone(tree, 8, "the tool tree after shutdown_timeout")
    stopped_after = time.monotonic() - signalled
    assert 1.8 <= stopped_after <= 6, f"tool tree stopped {stopped_after:.1f} s after SIGTERM (shutdown_timeout 2)"
    assert service.proc.wait(10) == 0
    row = job_row(db, job_id)
    assert row["job_state"] == "ready" and row["attempts"] == 0, row
    log = service.log()
    assert re.search(rf"job handed back to the queue job={job_id} .*released=True", log)
    assert "supervisor stopped exit_code=0" in log
    assert tool_processes(tmp_path) == []


def test_sigquit_hands_back_a_running_job_at_once(make_service, db, tmp_path):
    service = make_service(shutdown_timeout=60, lease_seconds=60).start()
    wait_for_workers_started(service, 2)
    _, job_id, pid_file = queue_fake(db, tmp_path, "--sleep", "60", *TREE)
    run = wait_for_run(pid_file, ("tool", "child", "grandchild"))
    wait_for_state(db, job_id, "in_progress")

    signalled = time.monotonic()
    assert service.stop(signal.SIGQUIT, timeout=15) == 0
    assert time.monotonic() - signalled < 6, "a fast stop does not wait for shutdown_timeout (60 s)"
    row = job_row(db, job_id)
    assert row["job_state"] == "ready" and row["attempts"] == 0, row
    assert re.search(rf"job handed back to the queue job={job_id} .*released=True", service.log())
    assert "supervisor stopped exit_code=0" in service.log()
    wait_gone(run["tool"] + run["child"] + run["grandchild"], 3, "the tool tree after SIGQUIT")


# -- reload -------------------------------------------------------------------------------------


def test_sighup_keeps_workers_on_a_broken_config_and_replaces_them_gracefully_on_a_valid_one(
    make_service, db, tmp_path
):
    service = make_service(workers=2).start()
    wait_for_workers_started(service, 2)
    original = live_worker_pids(service)
    assert len(original) == 2
    config = yaml.safe_load(service.config_path.read_text())

    service.write_config({**config, "workers": "lots"})
    service.signal(signal.SIGHUP)
    service.wait_for_log("reload failed; keeping the running configuration")
    service.wait_for_log(
        rf"^{re.escape(str(service.config_path))}: workers: must be a positive integer, "
        r"got 'lots' \(allowed: 1-64\)$"
    )
    _, job_id, pid_file = queue_fake(db, tmp_path, "--sleep", "0.2", tag="after-broken-reload")
    assert wait_for_state(db, job_id, {"completed"})["worker_id"] in {"test/1", "test/2"}
    assert live_worker_pids(service) == original, "a broken reload replaces no worker"
    assert "configuration reloaded" not in service.log()

    _, busy_job, busy_pids = queue_fake(db, tmp_path, "--sleep", "3", tag="busy-during-reload")
    busy_worker = psutil.Process(wait_for_run(busy_pids)["tool"][0]).ppid()
    assert busy_worker in original
    service.write_config({**config, "workers": 3})
    service.signal(signal.SIGHUP)
    service.wait_for_log(r"configuration reloaded; replacing workers .*workers=3\b")

    row = wait_for_state(db, busy_job, {"completed", "ready", "will_retry"}, timeout=15)
    assert row["job_state"] == "completed" and row["attempts"] == 1, "the busy worker finished its job first"
    wait_until(
        lambda: len(now := live_worker_pids(service)) == 3 and not now & original,
        15,
        f"three new workers (before: {original})\n{service.log()}",
    )
    log = service.log()
    assert "handed back" not in log
    completed_at = log.index(f"job completed job={busy_job}")
    assert re.search(rf"worker exited worker=test/\d pid={busy_worker}\b", log[completed_at:]), (
        "the busy worker exited after (not before) completing its job"
    )
    assert {name for name, _ in spawned(service)} == {"test/1", "test/2", "test/3"}


# -- hung workers and crash loops ---------------------------------------------------------------


def test_silent_worker_is_killed_and_replaced(make_service, db, tmp_path):
    service = make_service(workers=2, worker_timeout=3).start()
    wait_for_workers_started(service, 2)
    victim = dict(spawned(service))["test/1"]

    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.monotonic()
    service.wait_for_log(rf"worker stopped heartbeating: killing it worker=test/1 pid={victim}\b", timeout=10)
    # silence counts from the last beat, up to a second before SIGSTOP
    assert time.monotonic() - stopped_at >= 1.5, "killed only after worker_timeout (3 s) of silence"
    wait_until(
        lambda: [pid for name, pid in spawned(service) if name == "test/1"][-1] != victim,
        10,
        f"a new worker in slot test/1\n{service.log()}",
    )
    replacement = [pid for name, pid in spawned(service) if name == "test/1"][-1]
    wait_gone([victim], 5, "the silent worker")
    service.wait_for_log(r"worker started worker=test/1\b", count=2)

    jobs = [queue_fake(db, tmp_path, "--sleep", "0.2", tag=f"after-murder-{n}")[1] for n in range(3)]
    for job_id in jobs:
        assert wait_for_state(db, job_id, {"completed"}, timeout=15)["attempts"] == 1
    assert replacement in live_worker_pids(service)


def test_workers_dying_in_a_loop_make_the_supervisor_give_up_with_exit_1(make_service, tmp_path):
    service = make_service(workers=2).start()
    limit = max(5, 2 * 2)
    killed: list[int] = []
    deadline = time.monotonic() + 40
    while "workers are crashing in a loop" not in service.log():
        assert time.monotonic() < deadline, f"no crash loop after {len(killed)} kills\n{service.log()}"
        assert service.proc.poll() is None, f"supervisor exited early\n{service.log()}"
        victims = sorted(live_worker_pids(service) - set(killed))
        if not victims:
            time.sleep(0.05)
            continue
        # a crash of the worker's own (a segfault); kills from outside never make a loop (policies)
        os.kill(victims[0], signal.SIGSEGV)
        killed.append(victims[0])
        service.wait_for_log(rf"worker died worker=test/\d pid={victims[0]}\b", timeout=10)

    assert service.proc.wait(15) == 1
    log = service.log()
    before_verdict = log[: log.index("workers are crashing in a loop")]
    assert before_verdict.count("worker died") == limit + 1, "gives up on the first death over the limit"
    assert "supervisor stopped exit_code=1" in log


# -- the guide's listener and the command line ----------------------------------------------------


def test_listener_takes_worker_id_and_count_from_environment_and_dsn_from_its_argument(make_service, dsn, db, tmp_path):
    dbname = scalar(db, "SELECT current_database()")
    unusable = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={dbname}_not_this_one"
    service = make_service(config_dsn=unusable, worker_id="from-file", workers=1, poll_interval=30)
    env = {k: "" for k in os.environ if k.startswith("PGGIT_")}  # empty = unset, for the config
    env.update(
        PGGIT_CONFIG=str(service.config_path),
        PGGIT_WORKER_ID="guide-01",
        PGGIT_WORKERS="2",
        PGGIT_POLL_INTERVAL="1",
        PGGIT_LOG_LEVEL="DEBUG",
    )
    service.start(env=env, args=[sys.executable, "-c", LISTENER, dsn])

    wait_for_workers_started(service, 2, worker_id="guide-01")
    started = service.wait_for_log(r"supervisor started")[0]
    assert "worker_id=guide-01 workers=2 " in started
    assert "poll_interval=1s" in started and "log_level=DEBUG" in started
    assert f"db={PG_USER}@{PG_HOST}:{PG_PORT}/{dbname} " in started, "the DSN argument beats the file's dsn"
    assert "tools=custom" in started, "the file's tools are used"

    job_ids = [queue_fake(db, tmp_path, "--sleep", "0.1", tag=f"listener-{n}")[1] for n in range(2)]
    for job_id in job_ids:
        assert wait_for_state(db, job_id, {"completed"})["worker_id"] in {"guide-01/1", "guide-01/2"}
    log = service.log()
    assert "from-file" not in log and "cannot connect" not in log
    assert {name for name, _ in spawned(service)} == {"guide-01/1", "guide-01/2"}
    assert len(live_worker_pids(service)) == 2
    assert service.stop(signal.SIGTERM, timeout=15) == 0


def write_bad_config(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "dsn": dsn,
                "workers": 0,
                "pol_interval": 5,
                "tools": {"custom": {"allowed_commands": [FAKE_TOOL], "timeout": 0}},
            }
        )
    )
    return path


BAD_CONFIG_PROBLEMS = {
    "pol_interval": "unknown key",
    "workers": "must be between 1 and 64, got 0",
    "tools.custom.timeout": "must be between 1 and 604800, got 0",
}


def assert_lists_every_problem(lines: list[str], path: Path) -> None:
    shape = re.compile(rf"^{re.escape(str(path))}: ([\w.\[\]]+): (.+) \(allowed: .+\)$")
    found = {}
    for line in lines:
        match = shape.match(line)
        assert match, f"not a 'FILE: key.path: what (allowed: ...)' line: {line!r}"
        found[match[1]] = match[2]
    assert found == BAD_CONFIG_PROBLEMS


def test_check_config_lists_every_problem_and_exits_2(dsn, tmp_path):
    path = write_bad_config(tmp_path, dsn)
    result = pggit_cli("check-config", "-c", str(path))
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert_lists_every_problem(result.stderr.splitlines(), path)


def test_run_refuses_an_invalid_config_and_starts_no_worker(dsn, db, tmp_path):
    path = write_bad_config(tmp_path, dsn)
    result = pggit_cli("run", "-c", str(path), timeout=15)
    assert result.returncode == 2, result
    *problems, verdict = result.stderr.splitlines()
    assert verdict == "pggit-supervisor: not started: the configuration is invalid"
    assert_lists_every_problem(problems, path)
    output = result.stdout + result.stderr
    assert "supervisor started" not in output and "worker spawned" not in output
    connections = query(
        db,
        "SELECT application_name FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE 'pggit-supervisor%'",
    )
    assert connections == []
