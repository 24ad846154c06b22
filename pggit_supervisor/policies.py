"""The supervisor's rules, as values: when a dead worker's slot may start again, when deaths
amount to a crash loop, when a worker is silent for too long, and when systemd's watchdog may
be told all is well.

Nothing here reads a clock, sends a signal or logs: every rule takes `now` (one monotonic
clock, the supervisor's) and returns what to do, so each branch is tested in-process with a
fake clock. State is frozen: a rule returns the next state instead of changing the old one.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass

from .config import Database

CRASH_WINDOW_SECONDS = 60.0
MAX_RESTART_DELAY = 30.0
HEALTHY_RUN_SECONDS = 60.0  # a worker that lived this long resets its slot's restart delay
MIN_CRASH_LOOP_DEATHS = 5  # the crash-loop limit is this, or twice the workers if that is more


def pools(databases: Sequence[Database]) -> dict[int, tuple[Database, int]]:
    """Slot -> (its database, its number within that database's pool): each database has a
    pool of its own, so a busy or unreachable database holds only its own workers."""
    slots: dict[int, tuple[Database, int]] = {}
    for database in databases:
        for number in range(1, database.workers + 1):
            slots[len(slots) + 1] = (database, number)
    return slots


def worker_name(worker_id: str, database: Database, number: int) -> str:
    """One database: host/N as ever; several: host/database/N, unique in every queue and log
    (and still host/... to the schedules, which take the part before the first /)."""
    return f"{worker_id}/{number}" if database.single else f"{worker_id}/{database.name}/{number}"


def restart_delay(failures: int) -> float:
    """The first death of a slot restarts at once (a one-off crash costs nothing), then the
    delay doubles from one second up to MAX_RESTART_DELAY."""
    if failures <= 1:
        return 0.0
    return min(2.0 ** (failures - 2), MAX_RESTART_DELAY)


@dataclass(frozen=True)
class SlotBackoff:
    """One worker slot's restart back-off: deaths since it last ran healthy, and the earliest
    time its next worker may start."""

    failures: int = 0
    not_before: float = 0.0

    def may_start(self, now: float) -> bool:
        return now >= self.not_before

    def after_death(self, now: float) -> SlotBackoff:
        failures = self.failures + 1
        return SlotBackoff(failures, now + restart_delay(failures))

    def after_healthy_run(self) -> SlotBackoff:
        """A worker that ran long enough proves the slot works: its next death restarts at once
        again. The start time already granted is kept."""
        return SlotBackoff(0, self.not_before)


def ran_healthy(started: float, now: float) -> bool:
    return now - started > HEALTHY_RUN_SECONDS


# Deaths by a signal someone else sends (an operator, a fleet tool, a test's kill -9, the OOM
# killer choosing the worker) say nothing about the worker's code: the slot backs off and restarts,
# but they never make the supervisor give up. Exits with an error and self-inflicted signals
# (SIGSEGV, SIGABRT, ...) do, and so does a worker we killed ourselves for its silence.
EXTERNAL_KILL_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})


def is_crash(exit_code: int, killed_for_silence: bool) -> bool:
    """Whether a worker's death counts toward a crash loop (see EXTERNAL_KILL_SIGNALS)."""
    if killed_for_silence:
        return True
    return not (exit_code < 0 and -exit_code in EXTERNAL_KILL_SIGNALS)


def crash_loop_limit(workers: int) -> int:
    """More deaths than this inside the window is a loop, not bad luck."""
    return max(MIN_CRASH_LOOP_DEATHS, 2 * workers)


@dataclass(frozen=True)
class CrashLoop:
    """The worker deaths of the last CRASH_WINDOW_SECONDS, oldest first."""

    deaths: tuple[float, ...] = ()

    def after_death(self, now: float) -> CrashLoop:
        """Records a death at `now`, forgetting those more than the window before it."""
        return CrashLoop(tuple(t for t in self.deaths if now - t <= CRASH_WINDOW_SECONDS) + (now,))

    def is_looping(self, workers: int) -> bool:
        return len(self.deaths) > crash_loop_limit(workers)


def silent_for(last_beat: float, now: float) -> float:
    return now - last_beat


def is_silent(last_beat: float, now: float, worker_timeout: float) -> bool:
    """A worker that said nothing for longer than worker_timeout is stuck and gets killed."""
    return silent_for(last_beat, now) > worker_timeout


def all_heartbeating(last_beats: list[float], now: float, worker_timeout: float) -> bool:
    return not any(is_silent(beat, now, worker_timeout) for beat in last_beats)


WATCHDOG_RECHECK_SECONDS = 1.0  # how soon an unhealthy service looks again (never a busy loop)


@dataclass(frozen=True)
class Watchdog:
    """systemd's watchdog (WATCHDOG=1) is pinged every `interval` only while workers are
    healthy, so a supervisor whose workers hang is restarted by systemd. `interval` is None
    when systemd does not watch us; then the rule never asks for a ping."""

    interval: float | None
    next_at: float = 0.0

    def due(self, now: float) -> bool:
        return self.interval is not None and now >= self.next_at

    def check(self, now: float, healthy: bool) -> tuple[bool, Watchdog]:
        """Whether to ping now, and the watchdog's next state."""
        if self.interval is None or now < self.next_at:
            return False, self
        if healthy:
            return True, Watchdog(self.interval, now + self.interval)
        return False, Watchdog(self.interval, now + min(WATCHDOG_RECHECK_SECONDS, self.interval))

    def wait(self, now: float, longest: float) -> float:
        """How long the loop may sleep without missing a ping."""
        if self.interval is None:
            return longest
        return max(0.0, min(longest, self.next_at - now))
