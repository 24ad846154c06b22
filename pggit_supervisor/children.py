"""Signals for the supervisor's children, and the orphans it inherits as child subreaper.

A worker's tool runs in a process group of its own; when the worker dies, the tool (or what it
forked and left behind) is re-parented to the supervisor. These helpers signal a worker or a
tool's group that may already be gone, and kill every child that is not a worker.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Container

import psutil

from .log import fields
from .proctree import kill_tree

log = logging.getLogger("pggit.supervisor")

REAP_ORPHANS_SECONDS = 5.0


def signal_pid(pid: int, signum: int) -> None:
    """A process that already exited is not an error: it is what we wanted."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def signal_group(pgid: int, signum: int) -> None:
    """Never group 0 or 1, nor our own group: a bad pgid must not hit the supervisor or init."""
    if pgid <= 1 or pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, signum)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise


def kill_orphans(worker_pids: Container[int]) -> None:
    """Children that are not workers are orphans of a dead worker's tools (we are their
    subreaper): tools that left their process group. Nothing else of ours runs. Each one's
    whole subtree goes, frozen first so that nothing forks its way out; what was below an
    orphan that exits later is re-parented to us and found when that orphan is reaped."""
    for child in psutil.Process().children():
        if child.pid not in worker_pids:
            try:
                name = child.name()
            except psutil.Error:
                name = "?"
            report = kill_tree(child.pid, None, 0.0)
            log.warning(
                "killed an orphaned tool process tree" + fields(pid=child.pid, name=name, result=report.summary())
            )


def reap_orphans(worker_pids: Container[int], clock: Callable[[], float]) -> None:
    """At exit: nothing a tool left behind may outlive the service."""
    deadline = clock() + REAP_ORPHANS_SECONDS
    while clock() < deadline:
        kill_orphans(worker_pids)
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.05)
        except ChildProcessError:
            return
