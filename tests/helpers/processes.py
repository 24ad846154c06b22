"""Waiting for what processes do: a predicate with a deadline, and whether a pid has exited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """The predicate's first true value; an AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def gone(pid: int) -> bool:
    """Exited: a zombie counts (orphans' zombies wait on an init that may never reap them)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
