"""The supervisor: a pre-fork master that keeps `workers` worker processes alive.

It holds no database connection and no threads (so forking is safe), reaps its workers (and, as
child subreaper, the orphans of a dead worker's tools), restarts a dead worker with a growing
delay, kills a worker that stops heartbeating, and reports to systemd. Signal handlers only
record the signal and wake the loop through a self-pipe; `handle_*` methods do the work.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import psutil

from . import linux
from .config import Config, ConfigError, config_summary
from .log import fields
from .proctree import kill_tree
from .systemd import Notifier
from .worker import ABORT_DELIVERY_SECONDS, Worker

log = logging.getLogger("pggit.supervisor")

CRASH_WINDOW_SECONDS = 60.0
MAX_RESTART_DELAY = 30.0
HEALTHY_RUN_SECONDS = 60.0  # a worker that lived this long resets its slot's restart delay
EXIT_CRASH_LOOP = 1


@dataclass
class WorkerHandle:
    """What the supervisor knows of one forked worker (its own mutable bookkeeping)."""

    slot: int
    name: str
    pid: int
    pipe: int
    started: float
    last_beat: float
    busy_job: str | None = None
    tool_pgid: int | None = None
    retiring: bool = False
    killed: bool = False
    buffer: bytes = field(default=b"", repr=False)


class Supervisor:
    def __init__(self, config: Config, reload_config: Callable[[], Config], notifier: Notifier) -> None:
        self.config = config
        self.reload_config = reload_config
        self.notifier = notifier
        self.workers: dict[int, WorkerHandle] = {}
        self.signals: collections.deque[int] = collections.deque()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopping = False
        self.abort_at: float | None = None
        self.aborted = False
        self.kill_at: float | None = None
        self.crashes: collections.deque[float] = collections.deque()
        self.slot_failures: dict[int, int] = collections.defaultdict(int)
        self.slot_not_before: dict[int, float] = {}
        self.slot_release: set[int] = set()
        self.jobs_ok = 0
        self.jobs_failed = 0
        self.exit_code = 0
        self.next_watchdog = 0.0
        self.last_status = ""

    # -- signals: record and wake, nothing else ----------------------------------------------

    def install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)
        try:
            os.write(self.wake_w, b".")
        except BlockingIOError:
            pass

    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_stop(fast=False, why=signal.Signals(signum).name)
            elif signum == signal.SIGQUIT:
                self.handle_stop(fast=True, why="SIGQUIT")
            elif signum == signal.SIGHUP and not self.stopping:
                self.handle_reload()

    # -- the main loop -------------------------------------------------------------------------

    def run(self) -> int:
        self.install_signals()
        linux.set_child_subreaper()
        log.info("supervisor started" + fields(pid=os.getpid()) + " " + config_summary(self.config))
        self.manage_workers()
        self.notifier.ready(self.status_text())
        while not (self.stopping and not self.workers):
            self.sleep()
            self.handle_signals()
            self.read_workers()
            self.reap_workers()
            self.murder_silent_workers()
            if self.stopping:
                self.advance_shutdown()  # systemd stops watching after STOPPING=1: nothing more to say
            else:
                self.manage_workers()
                self.ping_watchdog()
                self.update_status()
        self.reap_orphans()
        log.info(
            "supervisor stopped" + fields(exit_code=self.exit_code, jobs_ok=self.jobs_ok, jobs_failed=self.jobs_failed)
        )
        return self.exit_code

    def sleep(self) -> None:
        timeout = 1.0
        if self.notifier.watchdog_interval and not self.stopping:
            timeout = max(0.0, min(timeout, self.next_watchdog - time.monotonic()))
        fds = [self.wake_r] + [w.pipe for w in self.workers.values()]
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        if self.wake_r in readable:
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    # -- workers -------------------------------------------------------------------------------

    def manage_workers(self) -> None:
        now = time.monotonic()
        occupied = {w.slot for w in self.workers.values()}
        for slot in range(1, self.config.workers + 1):
            if slot not in occupied and now >= self.slot_not_before.get(slot, 0.0):
                self.spawn_worker(slot)
        for worker in self.workers.values():
            if worker.slot > self.config.workers and not worker.retiring:
                self.retire(worker, "fewer workers configured")
            if now - worker.started > HEALTHY_RUN_SECONDS:
                self.slot_failures[worker.slot] = 0

    def spawn_worker(self, slot: int) -> None:
        name = f"{self.config.worker_id}/{slot}"
        release = slot in self.slot_release
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 70
            try:
                os.close(read_end)
                for fd in [self.wake_r, self.wake_w] + [w.pipe for w in self.workers.values()]:
                    os.close(fd)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                for variable in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                    os.environ.pop(variable, None)
                code = Worker(self.config, name, write_end, release, parent).run()
            except BaseException:
                log.exception("worker crashed" + fields(worker=name))
            finally:
                os._exit(code)
        os.close(write_end)
        os.set_blocking(read_end, False)
        now = time.monotonic()
        self.workers[pid] = WorkerHandle(slot, name, pid, read_end, now, now)
        self.slot_release.discard(slot)
        log.info("worker spawned" + fields(worker=name, pid=pid, releases_predecessor=release or None))

    def retire(self, worker: WorkerHandle, why: str) -> None:
        """Ask a worker to exit after its current job (SIGTERM)."""
        worker.retiring = True
        log.info("retiring worker" + fields(worker=worker.name, pid=worker.pid, why=why, busy=worker.busy_job))
        _signal(worker.pid, signal.SIGTERM)

    def read_workers(self) -> None:
        for worker in list(self.workers.values()):
            try:
                data = os.read(worker.pipe, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                continue  # EOF: the worker is exiting; reap_workers settles it
            worker.last_beat = time.monotonic()
            worker.buffer += data
            *lines, worker.buffer = worker.buffer.split(b"\n")
            for line in lines:
                self.handle_message(worker, line.decode(errors="replace").split())

    def handle_message(self, worker: WorkerHandle, words: list[str]) -> None:
        if not words:
            return
        if words[0] == "busy" and len(words) == 3:
            worker.busy_job = words[1]
            worker.tool_pgid = int(words[2]) or None
        elif words[0] == "idle":
            worker.busy_job = worker.tool_pgid = None
            outcome = words[1] if len(words) > 1 else ""
            self.jobs_ok += outcome == "ok"
            self.jobs_failed += outcome == "failed"

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self.handle_worker_exit(worker, os.waitstatus_to_exitcode(status))
            else:
                self.kill_orphans()  # an orphan died: its own children are ours now

    def handle_worker_exit(self, worker: WorkerHandle, code: int) -> None:
        os.close(worker.pipe)
        if worker.tool_pgid:
            # the tool's own PDEATHSIG took its leader; its children live in the same group
            _killpg(worker.tool_pgid, signal.SIGKILL)
        if worker.busy_job:
            self.kill_orphans()
        asked = self.stopping or worker.retiring
        if asked and code == 0 and not worker.killed:
            log.info("worker exited" + fields(worker=worker.name, pid=worker.pid))
            return
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        log.warning("worker died" + fields(worker=worker.name, pid=worker.pid, how=how, job=worker.busy_job))
        # the next worker of this slot returns what this one held to the queue before claiming
        self.slot_release.add(worker.slot)
        if asked and not worker.killed:
            return
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW_SECONDS:
            self.crashes.popleft()
        self.slot_failures[worker.slot] += 1
        failures = self.slot_failures[worker.slot]
        delay = 0.0 if failures == 1 else min(2.0 ** (failures - 2), MAX_RESTART_DELAY)
        self.slot_not_before[worker.slot] = now + delay
        limit = max(5, 2 * self.config.workers)
        if len(self.crashes) > limit and not self.stopping:
            log.error(
                f"workers are crashing in a loop ({len(self.crashes)} deaths in "
                f"{CRASH_WINDOW_SECONDS:g} s): giving up; see the worker errors above"
            )
            self.exit_code = EXIT_CRASH_LOOP
            self.handle_stop(fast=True, why="crash loop")

    def kill_orphans(self) -> None:
        """Children that are not workers are orphans of a dead worker's tools (we are their
        subreaper): tools that left their process group. Nothing else of ours runs. Each one's
        whole subtree goes, frozen first so that nothing forks its way out; what was below an
        orphan that exits later is re-parented to us and found when that orphan is reaped."""
        for child in psutil.Process().children():
            if child.pid not in self.workers:
                try:
                    name = child.name()
                except psutil.Error:
                    name = "?"
                report = kill_tree(child.pid, None, 0.0)
                log.warning(
                    "killed an orphaned tool process tree" + fields(pid=child.pid, name=name, result=report.summary())
                )

    def reap_orphans(self) -> None:
        """At exit: nothing a tool left behind may outlive the service."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.kill_orphans()
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.05)
            except ChildProcessError:
                return

    def murder_silent_workers(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            silent = now - worker.last_beat
            if silent > self.config.worker_timeout and not worker.killed:
                log.error(
                    "worker stopped heartbeating: killing it"
                    + fields(worker=worker.name, pid=worker.pid, silent=f"{silent:.0f}s", job=worker.busy_job)
                )
                worker.killed = True
                _signal(worker.pid, signal.SIGKILL)
                if worker.tool_pgid:
                    _killpg(worker.tool_pgid, signal.SIGKILL)

    # -- reload and stop -----------------------------------------------------------------------

    def handle_reload(self) -> None:
        self.notifier.reloading()
        try:
            new = self.reload_config()
        except ConfigError as exc:
            log.error("reload failed; keeping the running configuration:\n" + str(exc))
            self.notifier.ready(self.status_text())
            return
        self.config = new
        logging.getLogger().setLevel(new.log_level)
        log.info("configuration reloaded; replacing workers " + config_summary(new))
        for worker in self.workers.values():
            if not worker.retiring:
                self.retire(worker, "configuration reloaded")
        self.notifier.ready(self.status_text())

    def handle_stop(self, fast: bool, why: str) -> None:
        now = time.monotonic()
        if not self.stopping:
            self.stopping = True
            busy = sum(1 for w in self.workers.values() if w.busy_job)
            log.info(
                "stopping"
                + fields(
                    why=why,
                    fast=fast or None,
                    busy_workers=busy,
                    shutdown_timeout=None if fast else f"{self.config.shutdown_timeout}s",
                )
            )
            self.notifier.stopping(f"stopping ({why})")
            for worker in self.workers.values():
                _signal(worker.pid, signal.SIGTERM)
            self.abort_at = now + self.config.shutdown_timeout
        if fast:
            self.abort_at = min(self.abort_at or now, now)

    def advance_shutdown(self) -> None:
        now = time.monotonic()
        if not self.aborted and self.abort_at is not None and now >= self.abort_at:
            self.aborted = True
            busy = [w.name for w in self.workers.values() if w.busy_job]
            if busy:
                log.warning("stopping running tools and handing their jobs back" + fields(workers=",".join(busy)))
            for worker in self.workers.values():
                _signal(worker.pid, signal.SIGUSR1)
            grace = max([t.kill_grace for t in self.config.tools.values()] + [self.config.kill_grace])
            self.kill_at = now + grace + ABORT_DELIVERY_SECONDS + 5
        if self.kill_at is not None and now >= self.kill_at:
            for worker in self.workers.values():
                if not worker.killed:
                    log.error("worker did not stop: killing it" + fields(worker=worker.name, pid=worker.pid))
                    worker.killed = True
                    _signal(worker.pid, signal.SIGKILL)
                    if worker.tool_pgid:
                        _killpg(worker.tool_pgid, signal.SIGKILL)

    # -- systemd -------------------------------------------------------------------------------

    def healthy(self) -> bool:
        now = time.monotonic()
        return all(now - w.last_beat <= self.config.worker_timeout for w in self.workers.values())

    def ping_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval and time.monotonic() >= self.next_watchdog:
            if self.healthy():
                self.notifier.watchdog()
                self.next_watchdog = time.monotonic() + interval
            else:  # no ping while a worker is overdue; look again shortly (never a busy loop)
                self.next_watchdog = time.monotonic() + min(1.0, interval)

    def status_text(self) -> str:
        busy = sum(1 for w in self.workers.values() if w.busy_job)
        state = "stopping; " if self.stopping else ""
        return (
            f"{state}{len(self.workers)}/{self.config.workers} workers alive, {busy} busy, "
            f"{self.jobs_ok} jobs done, {self.jobs_failed} failed"
        )

    def update_status(self) -> None:
        text = self.status_text()
        if text != self.last_status:
            self.last_status = text
            self.notifier.status(text)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _killpg(pgid: int, signum: int) -> None:
    if pgid <= 1 or pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, signum)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise
