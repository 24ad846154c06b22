"""The two prctl(2) calls the service needs, in one place."""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def prctl_function() -> Callable[..., int]:
    """libc's prctl, looked up now (a forked child must not load libraries before exec)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _call(option: int, value: int) -> None:
    if prctl_function()(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def set_parent_death_signal(signum: int = signal.SIGKILL) -> None:
    """The kernel sends `signum` to this process when its parent dies."""
    _call(PR_SET_PDEATHSIG, int(signum))


def set_child_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of init, so a dead
    worker's tool processes that left its process group can still be found and killed."""
    _call(PR_SET_CHILD_SUBREAPER, 1)
