"""Kill a tool's whole process tree: SIGTERM, a grace period, then SIGKILL.

The process group alone is not enough: a descendant that called setsid() has left it, so the
tree is also walked through parent links (psutil) before anything is signalled. An orphan whose
parent already died hangs under init and cannot be found this way; only a subreaper or a cgroup
would catch it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

_POLL_SECONDS = 0.02
# After SIGKILL a process only lingers in uninterruptible sleep (a hung NFS mount, say); waiting
# longer would not help and would stall the worker, so report it instead.
_KILL_WAIT_SECONDS = 2.0
_MAX_FREEZE_ROUNDS = 10


@dataclass(frozen=True)
class KillReport:
    """What a tree kill found and what it took: enough for one log line per stubborn tool."""

    found: tuple[int, ...]
    exited_on_term: tuple[int, ...]
    killed: tuple[int, ...]
    survivors: tuple[int, ...]
    duration: float

    def summary(self) -> str:
        """One line for the log, e.g. '3 processes: 1 exited on SIGTERM, 2 needed SIGKILL'."""
        text = (
            f"{len(self.found)} processes: {len(self.exited_on_term)} exited on SIGTERM, "
            f"{len(self.killed)} needed SIGKILL"
        )
        if self.survivors:
            text += f", still alive: {', '.join(map(str, self.survivors))}"
        return text


def snapshot_tree(root_pid: int) -> list[psutil.Process]:
    """The root and every descendant still linked to it, root first; [] if the root is gone."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def is_alive(proc: psutil.Process) -> bool:
    """True until the process has exited; a zombie counts as gone (nobody may ever reap it)."""
    try:
        # is_running() also says False when the pid now belongs to another process.
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def kill_tree(
    root_pid: int, pgid: int | None, grace: float, pause: Callable[[float], object] = time.sleep
) -> KillReport:
    """SIGTERM the group and the tree, wait up to `grace` s, then SIGKILL whatever is left.

    `pause(seconds)` is how the waiting is done; the runner passes one that keeps reading the
    tool's output, so a tool that writes while it shuts down does not block on a full pipe.
    Nothing is reaped here: the caller reaps its own child, init reaps the orphans. Call this
    before reaping `root_pid`: while it is unreaped, its pid (the group id) cannot be reused.
    """
    _check_group(pgid)
    started = time.monotonic()
    known = {proc.pid: proc for proc in snapshot_tree(root_pid)}
    _signal_all(pgid, known.values(), signal.SIGTERM)

    deadline = started + grace
    while True:
        alive = [proc for proc in known.values() if is_alive(proc)]
        if not alive or time.monotonic() >= deadline:
            break
        # A process may fork while it shuts down; its new children get SIGTERM too.
        for proc in _new_children(alive, known):
            known[proc.pid] = proc
            _signal_one(proc, signal.SIGTERM)
        pause(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    exited_on_term = tuple(pid for pid, proc in known.items() if not is_alive(proc))
    killed: tuple[int, ...] = ()
    if alive:
        frozen = _freeze(alive, pgid, known)
        _signal_all(pgid, frozen, signal.SIGKILL)
        killed = tuple(proc.pid for proc in frozen)
        alive = _wait_gone(frozen, _KILL_WAIT_SECONDS, pause)
    return KillReport(
        found=tuple(known),
        exited_on_term=exited_on_term,
        killed=killed,
        survivors=tuple(proc.pid for proc in alive),
        duration=time.monotonic() - started,
    )


def _check_group(pgid: int | None) -> None:
    # killpg(0) or our own group would take the worker (and maybe the supervisor) down too.
    if pgid is not None and (pgid <= 1 or pgid == os.getpgrp()):
        raise ValueError(f"refusing to signal process group {pgid}: it is not the tool's own")


def _freeze(alive: list[psutil.Process], pgid: int | None, known: dict[int, psutil.Process]) -> list[psutil.Process]:
    """SIGSTOP the survivors and their children until no new child appears, so none escapes."""
    frozen = list(alive)
    _signal_all(pgid, frozen, signal.SIGSTOP)
    for _ in range(_MAX_FREEZE_ROUNDS):
        new = _new_children(frozen, known)
        if not new:
            break
        for proc in new:
            known[proc.pid] = proc
        frozen.extend(new)
        _signal_all(None, new, signal.SIGSTOP)
    return frozen


def _new_children(procs: Iterable[psutil.Process], known: dict[int, psutil.Process]) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            children = proc.children(recursive=True)
        except psutil.Error:
            continue
        found.update((child.pid, child) for child in children if child.pid not in known)
    return list(found.values())


def _wait_gone(procs: list[psutil.Process], timeout: float, pause: Callable[[float], object]) -> list[psutil.Process]:
    # Polling, not psutil.wait_procs: that would reap the caller's own child and lose its status.
    deadline = time.monotonic() + timeout
    alive = [proc for proc in procs if is_alive(proc)]
    while alive and time.monotonic() < deadline:
        pause(_POLL_SECONDS)
        alive = [proc for proc in alive if is_alive(proc)]
    return alive


def _signal_all(pgid: int | None, procs: Iterable[psutil.Process], sig: int) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for proc in procs:
        _signal_one(proc, sig)


def _signal_one(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.Error):  # gone already, or not ours to signal
        proc.send_signal(sig)  # checks first that the pid was not reused
