"""The supervisor's loop steps, in-process with a fake clock: what it does with what workers
send, with a dead worker (back-off, crash loop), with a silent one, and with systemd's watchdog.
Nothing is forked by the supervisor here; the "workers" are real `sleep` processes of the test,
and systemd is a real notification socket."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.clock import FakeClock
from pggit_supervisor.config import Config
from pggit_supervisor.policies import CRASH_WINDOW_SECONDS, HEALTHY_RUN_SECONDS, SlotBackoff, crash_loop_limit
from pggit_supervisor.supervisor import EXIT_CRASH_LOOP, Supervisor, WorkerHandle
from pggit_supervisor.systemd import Notifier

WORKER_TIMEOUT = 30.0


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Stand-ins for workers and tools: real processes that only sleep, killed at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def sleeper(processes: list[subprocess.Popen], own_group: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=own_group)
    processes.append(proc)
    return proc


@pytest.fixture
def make_supervisor(clock) -> Iterator:
    made: list[Supervisor] = []

    def _make(notifier: Notifier | None = None, workers: int = 1) -> Supervisor:
        config = Config(dsn="dbname=unused", workers=workers, worker_timeout=WORKER_TIMEOUT)
        supervisor = Supervisor(config, lambda: config, notifier or Notifier({}), clock=clock)
        made.append(supervisor)
        return supervisor

    yield _make
    for supervisor in made:
        os.close(supervisor.wake_r)
        os.close(supervisor.wake_w)
        for worker in supervisor.workers.values():
            os.close(worker.pipe)


def add_worker(supervisor: Supervisor, clock: FakeClock, pid: int, slot: int = 1) -> tuple[WorkerHandle, int]:
    """A worker handle as spawn_worker makes it; returns it and the write end of its pipe."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(read_end, False)
    worker = WorkerHandle(slot, f"test/{slot}", pid, read_end, clock(), clock())
    supervisor.workers[pid] = worker
    return worker, write_end


def dead_worker(clock: FakeClock, slot: int = 1, **state) -> WorkerHandle:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.close(write_end)
    return WorkerHandle(slot, f"test/{slot}", 999_999_999, read_end, clock(), clock(), **state)


# -- what workers send ------------------------------------------------------------------------


def test_lines_from_a_worker_update_its_job_tool_group_counters_and_heartbeat(make_supervisor, clock):
    supervisor = make_supervisor()
    worker, pipe = add_worker(supervisor, clock, pid=999_999_998)
    clock.advance(20.0)
    os.write(pipe, b"busy 7 0\nbusy 7 4242\nidle ok\nbusy 8 12")
    supervisor.read_workers()
    assert (worker.busy_job, worker.tool_pgid) == (None, None)  # "busy 8 12" is not complete yet
    assert (supervisor.jobs_ok, supervisor.jobs_failed) == (1, 0)
    assert worker.last_beat == clock()
    os.write(pipe, b"3\n")
    supervisor.read_workers()
    assert (worker.busy_job, worker.tool_pgid) == ("8", 123)
    os.write(pipe, b"idle failed\nidle stopped\n")
    supervisor.read_workers()
    assert (supervisor.jobs_ok, supervisor.jobs_failed) == (1, 1)
    os.close(pipe)


def test_a_bad_line_from_a_worker_is_logged_and_changes_nothing_but_the_heartbeat(make_supervisor, clock, caplog):
    supervisor = make_supervisor()
    worker, pipe = add_worker(supervisor, clock, pid=999_999_998)
    os.write(pipe, b"busy 7 99\n")
    supervisor.read_workers()
    clock.advance(25.0)
    with caplog.at_level(logging.WARNING, logger="pggit.supervisor"):
        os.write(pipe, b"busy 8 x\nbusy 8 -1\nidle\n")  # 0.1.0's supervisor died of the first
        supervisor.read_workers()
    assert (worker.busy_job, worker.tool_pgid) == ("7", 99)
    assert worker.last_beat == clock()
    warnings = [r.getMessage() for r in caplog.records if "ignored a line from a worker" in r.getMessage()]
    assert len(warnings) == 3 and "line='busy 8 x'" in warnings[0]
    os.close(pipe)


def test_a_worker_that_sends_nothing_keeps_its_old_heartbeat(make_supervisor, clock):
    supervisor = make_supervisor()
    worker, pipe = add_worker(supervisor, clock, pid=999_999_998)
    clock.advance(10.0)
    supervisor.read_workers()
    assert worker.last_beat == clock() - 10.0
    os.close(pipe)


# -- a dead worker ----------------------------------------------------------------------------


def test_a_crashing_slot_backs_off_and_the_supervisor_gives_up_on_a_crash_loop(make_supervisor, clock):
    supervisor = make_supervisor(workers=1)
    delays = []
    for death in range(1, crash_loop_limit(1) + 2):
        supervisor.handle_worker_exit(dead_worker(clock), code=1)
        delays.append(supervisor.backoff[1].not_before - clock())
        assert supervisor.slot_release == {1}  # the next worker hands back what this one held
        looping = death > crash_loop_limit(1)
        assert (supervisor.stopping, supervisor.exit_code) == ((True, EXIT_CRASH_LOOP) if looping else (False, 0))
        clock.advance(1.0)
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_deaths_spread_over_more_than_the_window_do_not_stop_the_supervisor(make_supervisor, clock):
    supervisor = make_supervisor(workers=1)
    for _ in range(3 * crash_loop_limit(1)):
        supervisor.handle_worker_exit(dead_worker(clock), code=-11)
        clock.advance(CRASH_WINDOW_SECONDS / crash_loop_limit(1) + 0.1)
    assert not supervisor.stopping
    assert supervisor.exit_code == 0


@pytest.mark.parametrize("code", [-9, -15, -2, -1, -3])
def test_workers_killed_from_outside_back_off_but_never_make_a_crash_loop(make_supervisor, clock, code):
    supervisor = make_supervisor(workers=1)
    for _ in range(3 * crash_loop_limit(1)):
        supervisor.handle_worker_exit(dead_worker(clock), code=code)
        clock.advance(0.5)
    assert supervisor.crash_loop.deaths == ()
    assert (supervisor.stopping, supervisor.exit_code) == (False, 0)
    assert supervisor.backoff[1].failures == 3 * crash_loop_limit(1)  # the slot still backs off


@pytest.mark.parametrize("code", [1, 70, -11, -6])
def test_exits_with_an_error_and_self_inflicted_signals_make_a_crash_loop(make_supervisor, clock, code):
    supervisor = make_supervisor(workers=1)
    for _ in range(crash_loop_limit(1) + 1):
        supervisor.handle_worker_exit(dead_worker(clock), code=code)
    assert (supervisor.stopping, supervisor.exit_code) == (True, EXIT_CRASH_LOOP)


def test_a_worker_killed_by_us_for_its_silence_counts_as_a_crash(make_supervisor, clock):
    supervisor = make_supervisor(workers=1)
    for _ in range(crash_loop_limit(1) + 1):
        supervisor.handle_worker_exit(dead_worker(clock, killed=True), code=-9)
    assert (supervisor.stopping, supervisor.exit_code) == (True, EXIT_CRASH_LOOP)


def test_a_retired_worker_exiting_cleanly_counts_as_no_death(make_supervisor, clock):
    supervisor = make_supervisor()
    for _ in range(10):
        supervisor.handle_worker_exit(dead_worker(clock, retiring=True), code=0)
    assert supervisor.crash_loop.deaths == ()
    assert supervisor.backoff[1] == SlotBackoff()
    assert supervisor.slot_release == set()


def test_a_retired_worker_that_exits_with_an_error_hands_back_but_is_no_crash(make_supervisor, clock):
    supervisor = make_supervisor()
    supervisor.handle_worker_exit(dead_worker(clock, retiring=True), code=3)
    assert supervisor.slot_release == {1}
    assert supervisor.crash_loop.deaths == ()


def test_workers_killed_during_shutdown_count_but_never_make_a_crash_loop_exit(make_supervisor, clock):
    supervisor = make_supervisor()
    supervisor.stop(fast=True, why="test")
    for _ in range(crash_loop_limit(1) + 3):
        supervisor.handle_worker_exit(dead_worker(clock, killed=True), code=-9)
    assert len(supervisor.crash_loop.deaths) == crash_loop_limit(1) + 3
    assert supervisor.exit_code == 0


def test_a_worker_that_ran_healthy_resets_its_slots_back_off(make_supervisor, clock, processes):
    supervisor = make_supervisor(workers=1)
    for _ in range(4):
        supervisor.handle_worker_exit(dead_worker(clock), code=1)
    assert supervisor.backoff[1].failures == 4
    clock.now = supervisor.backoff[1].not_before
    _, pipe = add_worker(supervisor, clock, pid=sleeper(processes).pid)  # its slot is occupied: no fork
    clock.advance(HEALTHY_RUN_SECONDS)
    supervisor.manage_workers()
    assert supervisor.backoff[1].failures == 4  # not longer than the healthy run yet
    clock.advance(0.5)
    supervisor.manage_workers()
    assert supervisor.backoff[1].failures == 0
    supervisor.handle_worker_exit(supervisor.workers.popitem()[1], code=1)
    assert supervisor.backoff[1].not_before == clock()  # restarted at once
    os.close(pipe)


# -- a silent worker --------------------------------------------------------------------------


def test_a_silent_worker_and_its_tool_group_are_killed_once(make_supervisor, clock, processes):
    supervisor = make_supervisor()
    worker_proc, tool_proc = sleeper(processes), sleeper(processes, own_group=True)
    worker, pipe = add_worker(supervisor, clock, pid=worker_proc.pid)
    worker.tool_pgid = tool_proc.pid
    clock.advance(WORKER_TIMEOUT)
    supervisor.murder_workers()
    assert worker_proc.poll() is None and not worker.killed  # exactly worker_timeout: not yet
    clock.advance(0.1)
    supervisor.murder_workers()
    assert worker.killed
    assert worker_proc.wait(5) == -signal.SIGKILL
    assert tool_proc.wait(5) == -signal.SIGKILL
    os.close(pipe)


def test_a_worker_that_keeps_talking_is_never_killed(make_supervisor, clock, processes):
    supervisor = make_supervisor()
    proc = sleeper(processes)
    worker, pipe = add_worker(supervisor, clock, pid=proc.pid)
    for _ in range(10):
        clock.advance(WORKER_TIMEOUT - 1)
        os.write(pipe, b"alive\n")
        supervisor.read_workers()
        supervisor.murder_workers()
    assert not worker.killed and proc.poll() is None
    os.close(pipe)


# -- systemd's watchdog -----------------------------------------------------------------------


@pytest.fixture
def systemd(monkeypatch) -> Iterator[socket.socket]:
    """A real sd_notify socket with a 10 s watchdog (so a ping is due every 5 s)."""
    directory = Path(tempfile.mkdtemp(prefix="pggit-notify-"))  # short: AF_UNIX paths are limited
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / "notify"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(directory / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()
    shutil.rmtree(directory)


def received(sock: socket.socket) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except BlockingIOError:
            return messages


def test_the_watchdog_is_pinged_every_interval_only_while_workers_are_healthy(make_supervisor, clock, systemd):
    supervisor = make_supervisor(notifier=Notifier())
    worker, pipe = add_worker(supervisor, clock, pid=999_999_998)
    supervisor.ping_watchdog()
    assert received(systemd) == [b"WATCHDOG=1"]
    clock.advance(4.9)
    os.write(pipe, b"alive\n")
    supervisor.read_workers()
    supervisor.ping_watchdog()
    assert received(systemd) == []  # not due yet
    clock.advance(0.1)
    supervisor.ping_watchdog()
    assert received(systemd) == [b"WATCHDOG=1"]
    clock.advance(WORKER_TIMEOUT)  # the worker is now overdue: systemd must see the service hang
    for _ in range(3):
        supervisor.ping_watchdog()
        assert received(systemd) == []
        clock.advance(1.0)
    os.write(pipe, b"alive\n")
    supervisor.read_workers()
    supervisor.ping_watchdog()  # healthy again: within a second of looking
    assert received(systemd) == [b"WATCHDOG=1"]
    os.close(pipe)


def test_without_a_watchdog_the_supervisor_never_pings(make_supervisor, clock, systemd, monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC")
    supervisor = make_supervisor(notifier=Notifier())
    for _ in range(5):
        supervisor.ping_watchdog()
        clock.advance(10.0)
    assert received(systemd) == []
