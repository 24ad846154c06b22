"""The supervisor: a pre-fork master that keeps `workers` worker processes alive.

It holds no database connection and no threads (so forking is safe), reaps its workers (and, as
child subreaper, the orphans of a dead worker's tools), restarts a dead worker with a growing
delay, kills a worker that stops heartbeating, and reports to systemd. It reads as a verb list,
like gunicorn's arbiter: `run`, `handle_<signal>`, `reap_workers`, `murder_workers`,
`manage_workers`, `spawn_worker`. Signal handlers only queue the signal and wake the loop
through a self-pipe; the loop does the work. The rules (back-off, crash loop, silence, watchdog)
are values in `policies`; what workers say is parsed by `pipe_protocol`. Every deadline is read
from one monotonic clock, `clock`.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from . import linux
from . import log as logs
from .children import kill_orphans, reap_orphans, signal_group, signal_pid
from .config import Config, ConfigError, Database, config_summary
from .log import fields
from .pipe_protocol import BadLine, Busy, Connected, Idle, LineReader, Message, Rescued
from .policies import (
    CRASH_WINDOW_SECONDS,
    CrashLoop,
    SlotBackoff,
    Watchdog,
    all_heartbeating,
    is_crash,
    is_silent,
    pools,
    ran_healthy,
    worker_name,
)
from .supervisor_metrics import SupervisorMetrics
from .systemd import Notifier
from .worker import ABORT_DELIVERY_SECONDS, Worker

log = logging.getLogger("pggit.supervisor")

EXIT_CRASH_LOOP = 1
LOOP_SECONDS = 1.0  # the longest the loop sleeps: deadlines are checked at least this often
# While no worker has reached its database yet, systemd's start timeout is pushed this far on,
# again every third of it: waiting for PostgreSQL is not a failed start.
START_EXTENSION_SECONDS = 30.0
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)


@dataclass
class WorkerHandle:
    """What the supervisor knows of one forked worker (its own mutable bookkeeping)."""

    slot: int  # 1..total workers, laid out over the databases in order (Supervisor.layout)
    name: str
    pid: int
    pipe: int
    started: float
    last_beat: float
    database: str = ""
    busy_job: str | None = None
    tool_pgid: int | None = None
    retiring: bool = False
    killed: bool = False
    connected: bool = False  # it has reached its database once (a `connected` line)
    reader: LineReader = field(default_factory=LineReader, repr=False)


class Supervisor:
    def __init__(
        self,
        config: Config,
        reload_config: Callable[[], Config],
        notifier: Notifier,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.reload_config = reload_config
        self.notifier = notifier
        self.clock = clock
        self.workers: dict[int, WorkerHandle] = {}
        self.signals: collections.deque[int] = collections.deque()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopping = False
        self.abort_at: float | None = None
        self.aborted = False
        self.kill_at: float | None = None
        self.crash_loop = CrashLoop()
        self.backoff: dict[int, SlotBackoff] = collections.defaultdict(SlotBackoff)
        self.slot_release: set[int] = set()
        self.jobs_ok = 0
        self.jobs_failed = 0
        self.exit_code = 0
        self.watchdog = Watchdog(notifier.watchdog_interval or None)
        self.last_status = ""
        self.ready = False  # READY=1 sent: once a worker could reach its database
        self.next_extend = 0.0  # until READY: when to push systemd's start timeout on again
        self.metrics = SupervisorMetrics(config)  # issue 11: deaths and kills, for the metrics textfile

    # -- signals: queue and wake, nothing else (no logging in a handler) -----------------------

    def install_signals(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)
        try:
            os.write(self.wake_w, b".")
        except BlockingIOError:
            pass

    def handle_signals(self) -> None:
        handlers = {
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_int,
            signal.SIGQUIT: self.handle_quit,
            signal.SIGHUP: self.handle_hup,
            signal.SIGCHLD: self.handle_chld,
        }
        while self.signals:
            handlers[signal.Signals(self.signals.popleft())]()

    def handle_term(self) -> None:
        """Graceful stop: workers finish their jobs within shutdown_timeout."""
        self.stop(fast=False, why="SIGTERM")

    def handle_int(self) -> None:
        self.stop(fast=False, why="SIGINT")

    def handle_quit(self) -> None:
        """Fast stop: running tools are stopped and their jobs handed back now."""
        self.stop(fast=True, why="SIGQUIT")

    def handle_hup(self) -> None:
        if not self.stopping:
            self.reload()

    def handle_chld(self) -> None:
        """Nothing to do here: it woke the loop, whose reap_workers runs on every turn."""

    # -- the main loop -------------------------------------------------------------------------

    def run(self) -> int:
        self.install_signals()
        linux.set_child_subreaper()
        log.info("supervisor started" + fields(pid=os.getpid()) + " " + config_summary(self.config))
        self.manage_workers()
        while not (self.stopping and not self.workers):
            self.sleep()
            self.handle_signals()
            self.read_workers()
            self.reap_workers()
            self.murder_workers()
            if self.stopping:
                self.advance_shutdown()  # systemd stops watching after STOPPING=1: nothing more to say
            else:
                self.manage_workers()
                self.ping_watchdog()
                self.update_status()
                self.metrics.write_if_due(w.database for w in self.workers.values() if not w.killed)
        reap_orphans(self.workers, self.clock)
        log.info(
            "supervisor stopped" + fields(exit_code=self.exit_code, jobs_ok=self.jobs_ok, jobs_failed=self.jobs_failed)
        )
        return self.exit_code

    def sleep(self) -> None:
        timeout = LOOP_SECONDS if self.stopping else self.watchdog.wait(self.clock(), LOOP_SECONDS)
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

    def layout(self) -> dict[int, tuple[Database, int]]:
        return pools(self.config.served())

    def manage_workers(self) -> None:
        now = self.clock()
        occupied = {w.slot for w in self.workers.values()}
        layout = self.layout()
        for slot in layout:
            if slot not in occupied and self.backoff[slot].may_start(now):
                self.spawn_worker(slot)
        for worker in self.workers.values():
            if worker.slot not in layout and not worker.retiring:
                self.retire(worker, "fewer workers configured")
            if ran_healthy(worker.started, now):
                self.backoff[worker.slot] = self.backoff[worker.slot].after_healthy_run()

    def spawn_worker(self, slot: int) -> None:
        database, number = self.layout()[slot]
        name = worker_name(self.config.worker_id, database, number)
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
                for signum in HANDLED_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                for variable in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                    os.environ.pop(variable, None)
                logs.set_context(database=database.name)
                code = Worker(self.config.for_database(database), name, write_end, release, parent).run()
            except BaseException:
                log.exception("worker crashed" + fields(worker=name))
            finally:
                os._exit(code)
        os.close(write_end)
        os.set_blocking(read_end, False)
        now = self.clock()
        self.workers[pid] = WorkerHandle(slot, name, pid, read_end, now, now, database.name)
        self.slot_release.discard(slot)
        log.info(
            "worker spawned"
            + fields(worker=name, pid=pid, releases_predecessor=release or None, database=database.name)
        )

    def retire(self, worker: WorkerHandle, why: str) -> None:
        """Ask a worker to exit after its current job (SIGTERM)."""
        worker.retiring = True
        log.info(
            "retiring worker"
            + fields(
                worker=worker.name, pid=worker.pid, why=why, busy=worker.busy_job, database=worker.database or None
            )
        )
        signal_pid(worker.pid, signal.SIGTERM)

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
            worker.last_beat = self.clock()  # any bytes prove it alive, "alive" says nothing more
            for message in worker.reader.feed(data):
                self.handle_message(worker, message)

    def handle_message(self, worker: WorkerHandle, message: Message) -> None:
        if isinstance(message, Connected):
            worker.connected = True
        elif isinstance(message, Busy):
            worker.busy_job, worker.tool_pgid = message.job_id, message.tool_pgid
        elif isinstance(message, Idle):
            worker.busy_job = worker.tool_pgid = None
            self.jobs_ok += message.outcome == "ok"
            self.jobs_failed += message.outcome == "failed"
        elif isinstance(message, Rescued):
            self.metrics.jobs_rescued(worker.database, message.count)
        elif isinstance(message, BadLine):
            log.warning(
                "ignored a line from a worker"
                + fields(
                    worker=worker.name,
                    pid=worker.pid,
                    why=message.why,
                    line=message.text,
                    database=worker.database or None,
                )
            )

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
                kill_orphans(self.workers)  # an orphan died: its own children are ours now

    def handle_worker_exit(self, worker: WorkerHandle, code: int) -> None:
        os.close(worker.pipe)
        if worker.tool_pgid:
            # the tool's own PDEATHSIG took its leader; its children live in the same group
            signal_group(worker.tool_pgid, signal.SIGKILL)
        if worker.busy_job:
            kill_orphans(self.workers)
        asked = self.stopping or worker.retiring
        if asked and code == 0 and not worker.killed:
            log.info("worker exited" + fields(worker=worker.name, pid=worker.pid, database=worker.database or None))
            return
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        log.warning(
            "worker died"
            + fields(worker=worker.name, pid=worker.pid, how=how, job=worker.busy_job, database=worker.database or None)
        )
        # the next worker of this slot returns what this one held to the queue before claiming
        self.slot_release.add(worker.slot)
        if asked and not worker.killed:
            return
        self.metrics.worker_died(worker.database)
        now = self.clock()
        if is_crash(code, worker.killed):
            self.crash_loop = self.crash_loop.after_death(now)
        self.backoff[worker.slot] = self.backoff[worker.slot].after_death(now)
        if self.crash_loop.is_looping(self.config.total_workers) and not self.stopping:
            log.error(
                f"workers are crashing in a loop ({len(self.crash_loop.deaths)} deaths in "
                f"{CRASH_WINDOW_SECONDS:g} s): giving up; see the worker errors above"
            )
            self.exit_code = EXIT_CRASH_LOOP
            self.stop(fast=True, why="crash loop")

    def murder_workers(self) -> None:
        """A worker silent for longer than worker_timeout is stuck: it and its tool are killed."""
        now = self.clock()
        for worker in self.workers.values():
            if is_silent(worker.last_beat, now, self.config.worker_timeout) and not worker.killed:
                log.error(
                    "worker stopped heartbeating: killing it"
                    + fields(
                        worker=worker.name,
                        pid=worker.pid,
                        silent=f"{now - worker.last_beat:.0f}s",
                        job=worker.busy_job,
                        database=worker.database or None,
                    )
                )
                self.kill_worker(worker)
                self.metrics.worker_killed(worker.database)

    def kill_worker(self, worker: WorkerHandle) -> None:
        """SIGKILL for the worker and its tool's process group; reap_workers settles its job."""
        worker.killed = True
        signal_pid(worker.pid, signal.SIGKILL)
        if worker.tool_pgid:
            signal_group(worker.tool_pgid, signal.SIGKILL)

    # -- reload and stop -----------------------------------------------------------------------

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = self.reload_config()
        except ConfigError as exc:
            log.error("reload failed; keeping the running configuration:\n" + str(exc))
            self.reloaded()
            return
        self.config = new
        self.metrics.config = new
        logging.getLogger().setLevel(new.log_level)
        log.info("configuration reloaded; replacing workers " + config_summary(new))
        for worker in self.workers.values():
            if not worker.retiring:
                self.retire(worker, "configuration reloaded")
        self.reloaded()

    def reloaded(self) -> None:
        """systemd ends RELOADING at the next READY=1; before the first one (no worker has reached
        its database yet) the service is still starting, and READY waits for a worker."""
        if self.ready:
            self.notifier.ready(self.status_text())
        else:
            self.notifier.status(self.status_text())

    def stop(self, fast: bool, why: str) -> None:
        now = self.clock()
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
                signal_pid(worker.pid, signal.SIGTERM)
            self.abort_at = now + self.config.shutdown_timeout
        if fast:
            self.abort_at = min(self.abort_at or now, now)

    def advance_shutdown(self) -> None:
        now = self.clock()
        if not self.aborted and self.abort_at is not None and now >= self.abort_at:
            self.aborted = True
            busy = [w.name for w in self.workers.values() if w.busy_job]
            if busy:
                log.warning("stopping running tools and handing their jobs back" + fields(workers=",".join(busy)))
            for worker in self.workers.values():
                signal_pid(worker.pid, signal.SIGUSR1)
            grace = max([t.kill_grace for t in self.config.tools.values()] + [self.config.kill_grace])
            self.kill_at = now + grace + ABORT_DELIVERY_SECONDS + 5
        if self.kill_at is not None and now >= self.kill_at:
            for worker in self.workers.values():
                if not worker.killed:
                    log.error(
                        "worker did not stop: killing it"
                        + fields(worker=worker.name, pid=worker.pid, database=worker.database or None)
                    )
                    self.kill_worker(worker)

    # -- systemd -------------------------------------------------------------------------------

    def healthy(self, now: float) -> bool:
        return all_heartbeating([w.last_beat for w in self.workers.values()], now, self.config.worker_timeout)

    def ping_watchdog(self) -> None:
        """Called only while the loop runs and the service is not stopping."""
        now = self.clock()
        if self.watchdog.due(now):
            ping, self.watchdog = self.watchdog.check(now, self.healthy(now))
            if ping:
                self.notifier.watchdog()

    def status_text(self) -> str:
        busy = sum(1 for w in self.workers.values() if w.busy_job)
        state = "stopping; " if self.stopping else ""
        return (
            f"{state}{len(self.workers)}/{self.config.total_workers} workers alive, {busy} busy, "
            f"{self.jobs_ok} jobs done, {self.jobs_failed} failed"
            + ("" if self.ready or self.stopping else "; waiting for the queue database")
        )

    def update_status(self) -> None:
        """READY=1 once a worker has reached its database (systemd's start then succeeds: the
        service can work), not at fork time; then STATUS whenever it changes."""
        if not self.ready and any(w.connected for w in self.workers.values()):
            self.ready = True
            self.last_status = self.status_text()
            self.notifier.ready(self.last_status)
            return
        if not self.ready and self.clock() >= self.next_extend:
            self.notifier.extend_start(START_EXTENSION_SECONDS)
            self.next_extend = self.clock() + START_EXTENSION_SECONDS / 3
        text = self.status_text()
        if text != self.last_status:
            self.last_status = text
            self.notifier.status(text)
