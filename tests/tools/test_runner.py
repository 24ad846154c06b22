"""The runner starts a tool safely, captures its output within bounds and never leaves it behind."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from helpers.processes import gone, wait_until
from helpers.session import FAKE_TOOL
from pggit_supervisor import runner
from pggit_supervisor.proctree import kill_tree
from pggit_supervisor.runner import (
    TOOL_PATH,
    CapturedOutput,
    RunAsError,
    RunnerError,
    RunResult,
    RunSpec,
    ToolStartError,
    run_tool,
    tool_environment,
)

REPO_ROOT = str(Path(__file__).resolve().parents[2])
# The venv's python lives under /root (mode 0700); a tool run as another user needs this one.
SYSTEM_PYTHON = "/usr/bin/python3"
MiB = 1 << 20

_spec = importlib.util.spec_from_file_location("fake_tool", FAKE_TOOL)
fake_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_tool)


def fake(*args: str, python: str = sys.executable) -> tuple[str, ...]:
    return (python, FAKE_TOOL, *args)


def spec_for(*args: str, python: str = sys.executable, **kwargs) -> RunSpec:
    kwargs.setdefault("env", {})
    kwargs.setdefault("timeout", 20.0)
    return RunSpec(argv=fake(*args, python=python), **kwargs)


def read_pids(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    pairs = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {role: int(pid) for role, pid in pairs}


@pytest.fixture
def leftover_pids():
    """Pids a test started; whatever is still alive at the end is killed so nothing leaks."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
        except psutil.Error:
            pass


def test_exit_code_and_output_of_both_streams_are_captured():
    result = run_tool(spec_for("--exit", "3", "--stdout-bytes", "100", "--stderr-bytes", "50"))

    assert result.exit_code == 3
    assert result.signal is None
    assert not result.ok
    assert result.stdout == CapturedOutput(head=fake_tool.line_stream(100, b"o"))
    assert result.stderr == CapturedOutput(head=fake_tool.line_stream(50, b"e"))
    assert result.summary().startswith("exit 3 after ")
    assert result.argv == fake("--exit", "3", "--stdout-bytes", "100", "--stderr-bytes", "50")


def test_successful_tool_is_ok():
    result = run_tool(spec_for())

    assert result.ok
    assert (result.exit_code, result.timed_out, result.stopped_reason) == (0, False, None)


def test_tool_without_a_cwd_runs_in_the_root_directory_not_the_services(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # e.g. a checkout the tool's user cannot enter
    result = run_tool(RunSpec(("/bin/pwd",), {}, 10))

    assert result.ok and result.stdout.text().strip() == "/"


def test_five_megabytes_on_both_streams_finish_without_deadlock_and_stay_bounded():
    total, limit = 5 * MiB, 32 * 1024
    result = run_tool(
        spec_for("--stdout-bytes", str(total), "--stderr-bytes", str(total), timeout=20.0, output_limit=limit)
    )

    assert result.exit_code == 0 and not result.timed_out
    for captured, prefix in ((result.stdout, b"o"), (result.stderr, b"e")):
        expected = fake_tool.line_stream(total, prefix)
        assert len(captured.head) + len(captured.tail) <= 2 * limit
        assert captured.head == expected[:limit]
        assert captured.tail == expected[-limit:]
        assert captured.dropped == total - 2 * limit
        assert captured.total_bytes == total
        assert f"\n...[{total - 2 * limit} bytes dropped]...\n" in captured.text()


def test_captured_text_replaces_invalid_utf8_and_marks_the_gap():
    assert CapturedOutput(b"ab\xff", b"yz", 10).text() == "ab\ufffd\n...[10 bytes dropped]...\nyz"
    assert CapturedOutput(b"caf\xc3", b"\xa9", 0).text() == "café"


def test_timeout_kills_tool_child_and_setsid_grandchild(tmp_path, leftover_pids):
    pids_file = tmp_path / "pids"
    sessions: dict[str, int] = {}

    def on_tick() -> None:
        pids = read_pids(pids_file)
        if len(pids) == 3 and not sessions:
            sessions.update({role: os.getsid(pid) for role, pid in pids.items()})

    result = run_tool(
        spec_for(
            "--sleep", "60", "--spawn-grandchild-setsid", "--write-pids", str(pids_file), timeout=1.5, kill_grace=5.0
        ),
        on_tick=on_tick,
        tick_interval=0.1,
    )
    pids = read_pids(pids_file)
    leftover_pids.extend(pids.values())

    assert result.timed_out and not result.ok
    assert result.summary() == "timed out after 1.5 s"
    assert result.signal == signal.SIGTERM
    assert result.duration < 1.5 + 3.0
    assert set(pids) == {"tool", "child", "grandchild"}
    # The grandchild really left the tool's session, so killing the group alone would miss it.
    assert sessions["grandchild"] != sessions["tool"] == pids["tool"]
    wait_until(lambda: all(gone(pid) for pid in pids.values()), 2.0, "the tool, its child and grandchild to be gone")


def test_tool_ignoring_sigterm_is_killed_with_its_tree_after_the_grace(tmp_path, leftover_pids):
    pids_file = tmp_path / "pids"
    result = run_tool(
        spec_for(
            "--sleep",
            "60",
            "--ignore-term",
            "--spawn-grandchild-setsid",
            "--write-pids",
            str(pids_file),
            timeout=1.0,
            kill_grace=0.5,
        )
    )
    pids = read_pids(pids_file)
    leftover_pids.extend(pids.values())

    assert result.timed_out
    assert result.signal == signal.SIGKILL and result.exit_code is None
    assert set(pids) == {"tool", "child", "grandchild"}
    assert set(pids.values()) <= set(result.kill_report.killed)
    assert result.kill_report.exited_on_term == ()
    assert 1.0 + 0.5 <= result.duration < 1.0 + 0.5 + 3.0
    assert all(gone(pid) for pid in pids.values())


def test_timeout_kills_an_orphaned_descendant_left_in_the_tools_group(tmp_path, leftover_pids):
    pids_file = tmp_path / "pids"
    orphan_parent: list[int] = []

    def on_tick() -> None:
        pids = read_pids(pids_file)
        if "orphan" in pids and not orphan_parent:
            orphan_parent.append(psutil.Process(pids["orphan"]).ppid())

    result = run_tool(
        spec_for("--sleep", "60", "--spawn-orphan", "--write-pids", str(pids_file), timeout=1.0, kill_grace=5.0),
        on_tick=on_tick,
        tick_interval=0.1,
    )
    pids = read_pids(pids_file)
    leftover_pids.extend(pids.values())

    assert result.timed_out
    assert orphan_parent and orphan_parent[0] != pids["tool"]
    wait_until(lambda: gone(pids["orphan"]), 2.0, "the orphan to be gone")


def test_on_tick_reason_stops_the_tree_promptly(tmp_path, leftover_pids):
    pids_file = tmp_path / "pids"
    started: list[tuple[int, int, int, int]] = []
    ticks: list[float] = []

    def on_start(pid: int, pgid: int) -> None:
        started.append((pid, pgid, os.getpgid(pid), psutil.Process(pid).ppid()))

    def on_tick() -> str | None:
        ticks.append(time.monotonic())
        if len(ticks) >= 3 and len(read_pids(pids_file)) == 2:
            return "job cancelled"
        return None

    result = run_tool(
        spec_for("--sleep", "60", "--spawn-child", "--write-pids", str(pids_file)),
        on_tick=on_tick,
        tick_interval=0.1,
        on_start=on_start,
    )
    returned = time.monotonic()
    pids = read_pids(pids_file)
    leftover_pids.extend(pids.values())

    assert result.stopped_reason == "job cancelled"
    assert not result.timed_out and not result.ok
    assert result.summary().startswith("stopped after ") and "job cancelled" in result.summary()
    assert returned - ticks[-1] < 1.0
    tool_pid = pids["tool"]
    assert started == [(tool_pid, tool_pid, tool_pid, os.getpid())]
    assert all(gone(pid) for pid in pids.values())


def test_exception_from_on_tick_kills_the_tree_and_propagates(tmp_path, leftover_pids):
    pids_file = tmp_path / "pids"

    def on_tick() -> None:
        if len(read_pids(pids_file)) == 2:
            raise ConnectionError("database went away")

    with pytest.raises(ConnectionError, match="database went away"):
        run_tool(
            spec_for("--sleep", "60", "--spawn-child", "--write-pids", str(pids_file)),
            on_tick=on_tick,
            tick_interval=0.05,
        )
    pids = read_pids(pids_file)
    leftover_pids.extend(pids.values())

    assert len(pids) == 2
    assert all(gone(pid) for pid in pids.values())


def test_tool_exit_is_not_held_up_by_a_child_keeping_the_pipes_open(tmp_path, leftover_pids):
    pids_file = tmp_path / "pids"
    result = run_tool(spec_for("--exit", "4", "--spawn-child", "--write-pids", str(pids_file), timeout=20.0))
    leftover_pids.extend(read_pids(pids_file).values())

    assert result.exit_code == 4 and not result.timed_out
    assert result.duration < 5.0


def test_tool_killed_by_a_signal_reports_the_signal():
    result = run_tool(spec_for("--kill-self", str(int(signal.SIGKILL))))

    assert result.exit_code is None and result.signal == signal.SIGKILL
    assert not result.ok
    assert result.summary() == "killed by signal 9 (SIGKILL)"


def test_summary_names_exit_code_timeout_and_stop_reason():
    base = dict(argv=("/bin/true",), signal=None, timed_out=False, stopped_reason=None, duration=1.26, timeout=5.0)
    assert RunResult(exit_code=2, **base).summary() == "exit 2 after 1.3 s"
    assert RunResult(**{**base, "exit_code": None, "timed_out": True}).summary() == "timed out after 5 s"
    assert (
        RunResult(**{**base, "exit_code": None, "stopped_reason": "shutting down"}).summary()
        == "stopped after 1.3 s: shutting down"
    )


def test_stdin_is_closed_even_when_the_worker_has_one():
    read_end, write_end = os.pipe()
    os.write(write_end, b"secret from the worker's stdin")
    saved_stdin = os.dup(0)
    os.dup2(read_end, 0)
    try:
        result = run_tool(spec_for("--read-stdin", timeout=10.0))
    finally:
        os.dup2(saved_stdin, 0)
        for fd in (saved_stdin, read_end, write_end):
            os.close(fd)

    assert result.exit_code == 0 and not result.timed_out
    assert json.loads(result.stdout.text()) == {"stdin_bytes": 0}


def test_environment_is_scrubbed_to_the_known_set_plus_extra(monkeypatch):
    for name, value in {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
        "PGPASSWORD": "leaked",
        "FOO": os.urandom(8).hex(),
    }.items():
        monkeypatch.setenv(name, value)

    result = run_tool(spec_for("--print-env", env={"PGHOST": "/run/postgresql", "PGPORT": "5433"}))

    root = pwd.getpwuid(os.geteuid())
    assert json.loads(result.stdout.text()) == {
        "PATH": TOOL_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": root.pw_dir,
        "USER": root.pw_name,
        "LOGNAME": root.pw_name,
        "PGHOST": "/run/postgresql",
        "PGPORT": "5433",
    }


def test_tool_environment_uses_the_run_as_users_home_and_passes_explicit_extra():
    postgres = pwd.getpwnam("postgres")

    env = tool_environment("postgres", {"PGPASSWORD": "given on purpose"})

    assert env["HOME"] == postgres.pw_dir
    assert env["USER"] == env["LOGNAME"] == "postgres"
    assert env["PGPASSWORD"] == "given on purpose"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_shell_metacharacters_in_argv_are_passed_literally(tmp_path):
    canary = tmp_path / "canary"
    hostile = [
        f"; touch {canary}",
        f"$(touch {canary})",
        f"`touch {canary}`",
        "'single'",
        '"double"',
        "a\nb",
        "| cat /etc/passwd",
        "&& id",
        "> out",
        "*",
        "~",
        "",
        " spaced ",
        "%s%n",
        "\\",
    ]

    result = run_tool(spec_for("--print-argv", *hostile))

    assert json.loads(result.stdout.text()) == ["--print-argv", *hostile]
    assert not canary.exists()


@pytest.mark.parametrize(
    "argv0", ["python3", "./tests/fake_tool.py", "/nonexistent/pg_dump", "/usr/bin", "NOT_EXECUTABLE"]
)
def test_relative_missing_or_non_executable_tool_raises_tool_start_error(argv0, tmp_path):
    if argv0 == "NOT_EXECUTABLE":
        argv0 = str(tmp_path / "pg_dump")
        Path(argv0).write_text("#!/bin/sh\n")
        os.chmod(argv0, 0o644)

    with pytest.raises(ToolStartError, match="tool ") as caught:
        run_tool(RunSpec(argv=(argv0, "--version"), env={}, timeout=5.0))
    assert isinstance(caught.value, RunnerError)


def test_run_as_postgres_as_root_switches_uid_groups_and_home():
    assert os.geteuid() == 0, "this test proves the root path; run the suite as root"
    postgres = pwd.getpwnam("postgres")

    result = run_tool(spec_for("--print-ids", "--print-env", python=SYSTEM_PYTHON, run_as="postgres", cwd="/"))

    assert result.exit_code == 0, result.stderr.text()
    env_line, ids_line = result.stdout.text().splitlines()
    ids, env = json.loads(ids_line), json.loads(env_line)
    assert ids["uid"] == ids["euid"] == postgres.pw_uid
    assert ids["gid"] == ids["egid"] == postgres.pw_gid
    assert ids["groups"] == sorted(set(os.getgrouplist("postgres", postgres.pw_gid)))
    assert 0 not in ids["groups"]
    assert env["HOME"] == postgres.pw_dir
    assert env["USER"] == env["LOGNAME"] == "postgres"


def test_run_as_unknown_user_raises_run_as_error():
    with pytest.raises(RunAsError, match="does not exist"):
        run_tool(spec_for(run_as="no-such-user-pggit"))


def _as_nobody(action: Callable[[], dict]) -> dict:
    """Run `action` in a forked child that dropped to user nobody; return what it reports."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            report = action()
        except BaseException as err:  # noqa: BLE001 - everything must reach the parent
            report = {"unexpected": repr(err)}
        finally:
            os.write(write_end, json.dumps(report).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_run_as_another_user_without_root_raises_run_as_error():
    def try_run_as_postgres() -> dict:
        try:
            run_tool(spec_for(python=SYSTEM_PYTHON, run_as="postgres", cwd="/"))
        except RunAsError as err:
            return {"error": str(err)}
        return {"error": None}

    report = _as_nobody(try_run_as_postgres)

    assert report["error"] == (
        "tool python3: run_as 'postgres' needs the service to run as root (it runs as "
        "'nobody'); remove run_as or run the service as root"
    )


def test_run_as_the_current_user_without_root_runs_as_is():
    def run_as_nobody() -> dict:
        result = run_tool(spec_for("--print-ids", python=SYSTEM_PYTHON, run_as="nobody", cwd="/"))
        return {"exit": result.exit_code, "ids": result.stdout.text(), "stderr": result.stderr.text()}

    report = _as_nobody(run_as_nobody)

    assert report.get("exit") == 0, report
    assert json.loads(report["ids"])["uid"] == pwd.getpwnam("nobody").pw_uid


_WORKER_SCRIPT = """
import os, sys
from pggit_supervisor.runner import RunSpec, run_tool

pid_file, run_as, python, fake_tool = sys.argv[1:5]

def on_start(pid, pgid):
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(pid_file + ".tmp", pid_file)

run_tool(RunSpec(argv=(python, fake_tool, "--sleep", "30"), env={}, timeout=30.0,
                 run_as=run_as or None, cwd="/"), on_start=on_start)
"""


@pytest.mark.parametrize("run_as", [None, "postgres"])
def test_tool_dies_when_its_worker_is_killed(run_as, tmp_path, leftover_pids):
    pid_file = tmp_path / "tool.pid"
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER_SCRIPT, str(pid_file), run_as or "", SYSTEM_PYTHON, FAKE_TOOL],
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )
    try:
        wait_until(pid_file.exists, 10.0, "the worker to start its tool")
        tool_pid = int(pid_file.read_text())
        leftover_pids.append(tool_pid)
        tool = psutil.Process(tool_pid)
        assert tool.ppid() == worker.pid
        expected_uid = pwd.getpwnam(run_as).pw_uid if run_as else os.geteuid()
        assert tool.uids().real == expected_uid
        time.sleep(0.2)  # the tool is running its own code now, long past preexec_fn

        worker.kill()
        worker.wait()

        wait_until(lambda: gone(tool_pid), 3.0, "the tool to die with its worker")
    finally:
        worker.kill()
        worker.wait()


def test_peak_rss_reports_what_the_tool_allocated():
    # More than this worker's own RSS, which Linux folds into the child's ru_maxrss at fork.
    alloc_mb = psutil.Process().memory_info().rss // MiB + 64

    result = run_tool(spec_for("--alloc-mb", str(alloc_mb)))

    assert result.exit_code == 0
    assert result.peak_rss_bytes is not None
    assert result.peak_rss_bytes >= alloc_mb * MiB


def test_kill_tree_refuses_to_signal_the_workers_own_process_group():
    with pytest.raises(ValueError, match="refusing"):
        kill_tree(os.getpid(), os.getpgrp(), grace=0.0)


@pytest.mark.parametrize(
    ("make", "retryable"),
    [("missing", False), ("not_executable", False), ("runs", None)],
)
def test_a_tool_gone_between_the_check_and_the_exec_is_a_tool_start_error(make, retryable, tmp_path, monkeypatch):
    """setpriv's exec failure (126/127 and one 'setpriv:' line) is told apart from a tool's own
    exit 127: the binary that vanished after _check_executable is a clear ToolStartError."""
    tool = tmp_path / "pg_dump"
    if make == "not_executable":
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o644)
    elif make == "runs":
        tool.write_text("#!/bin/sh\necho 'setpriv: failed to execute x: No such file or directory' >&2\nexit 127\n")
        tool.chmod(0o755)
    monkeypatch.setattr(runner, "_check_executable", lambda spec: None)  # the race: checked, then gone
    spec = RunSpec(argv=(str(tool), "--version"), env={}, timeout=5.0)

    if retryable is None:  # the tool itself said it: its exit code, not a start error
        result = run_tool(spec)
        assert result.exit_code == 127 and result.argv == spec.argv
        return
    with pytest.raises(ToolStartError) as caught:
        run_tool(spec)
    assert caught.value.retryable is retryable
    assert str(caught.value).startswith(f"tool pg_dump: cannot start {tool}: failed to execute {tool}: ")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_the_tool_is_started_by_vfork_not_a_copy_of_the_worker(tmp_path):
    """Issue 12: fork() of the worker was half of a no-op job's CPU; CPython vforks only without
    preexec_fn and user/group arguments, which setpriv took over."""
    script = (
        "from pggit_supervisor.runner import RunSpec, run_tool\n"
        "r = run_tool(RunSpec(argv=('/bin/true',), env={}, timeout=5.0, run_as='postgres'))\n"
        "assert r.exit_code == 0, r.stderr.text()\n"
    )
    trace = tmp_path / "trace"
    subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=clone,clone3,fork,vfork", "-o", str(trace), sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
        check=True,
    )
    spawns = [line for line in trace.read_text().splitlines() if "clone" in line or "fork" in line]
    assert spawns, "no process was started"
    assert all("CLONE_VFORK" in line or "vfork(" in line for line in spawns), spawns
