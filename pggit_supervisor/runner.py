"""Run one backup tool (pg_dump, pgbackrest, ...) as a subprocess, safely and observably.

Every tool the service starts goes through `run_tool`: argv only (never a shell), stdin closed,
a scrubbed environment, its own session, optionally another user, a parent-death signal, bounded
output capture, a timeout, and a caller hook to renew a lease or stop the tool. No threads: the
worker is a single-threaded forked process, so one selector multiplexes output, ticks and the
deadline, all on the monotonic clock.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import JobError
from .linux import PR_SET_PDEATHSIG, prctl_function
from .proctree import KillReport
from .tool_session import CapturedOutput, ToolSession

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "TOOL_PATH",
    "CapturedOutput",
    "RunAsError",
    "RunResult",
    "RunSpec",
    "RunnerError",
    "ToolStartError",
    "run_tool",
    "tool_environment",
]

DEFAULT_OUTPUT_LIMIT = 32 * 1024
# exec failures no retry can cure: no such file, permission denied, not an executable format
_LASTING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ENOEXEC, errno.ELOOP})
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RunnerError(JobError):
    """A tool could not be run at all; the message says what to fix, `retryable` whether a
    later attempt can help (a fork that failed for lack of memory can; a missing binary cannot)."""


class ToolStartError(RunnerError):
    """The executable is missing, not absolute, not executable (never retryable: the host must
    change first), or exec failed (retryable unless said otherwise)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)


class RunAsError(RunnerError):
    """The tool cannot run as the requested user: the host or the config must change first."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class RunSpec:
    """What to run and within which limits.

    `env` is added to the scrubbed base environment (see `tool_environment`), never replaces it.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str]
    timeout: float
    run_as: str | None = None
    cwd: str | None = None
    kill_grace: float = 10.0
    output_limit: int = DEFAULT_OUTPUT_LIMIT

    def __post_init__(self) -> None:
        # Copies, so a caller mutating its list or dict later cannot change a running spec.
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        if not self.argv:
            raise ToolStartError("empty argv: nothing to run")
        if not self.timeout > 0:
            raise ValueError(f"tool {self.tool_name}: timeout must be > 0, got {self.timeout}")
        if self.kill_grace < 0 or self.output_limit < 0:
            raise ValueError(f"tool {self.tool_name}: kill_grace and output_limit must be >= 0")

    @property
    def tool_name(self) -> str:
        """The executable's base name, for messages ('pg_dump')."""
        return os.path.basename(self.argv[0])


@dataclass(frozen=True)
class RunResult:
    """How a tool run ended. `exit_code` is None when it died by a signal or was not reaped."""

    argv: tuple[str, ...]
    exit_code: int | None
    signal: int | None
    timed_out: bool
    stopped_reason: str | None
    duration: float
    timeout: float
    stdout: CapturedOutput = field(default_factory=CapturedOutput)
    stderr: CapturedOutput = field(default_factory=CapturedOutput)
    # From wait4's ru_maxrss. Linux carries the pre-exec high-water mark into it, so this is the
    # larger of the tool's peak and the worker's RSS when it forked: exact for any tool bigger
    # than the worker, an upper bound otherwise. None if the tool could not be reaped.
    peak_rss_bytes: int | None = None
    kill_report: KillReport | None = None

    @property
    def ok(self) -> bool:
        """The tool finished by itself with exit status 0."""
        return self.exit_code == 0 and not self.timed_out and self.stopped_reason is None

    def summary(self) -> str:
        """One line for the log: 'exit 2 after 1.3 s', 'timed out after 5 s', ..."""
        if self.timed_out:
            return f"timed out after {self.timeout:g} s"
        if self.stopped_reason is not None:
            return f"stopped after {self.duration:.1f} s: {self.stopped_reason}"
        if self.signal is not None:
            return f"killed by signal {self.signal} ({_signal_name(self.signal)})"
        if self.exit_code is None:
            return f"exit status unknown after {self.duration:.1f} s (the tool was not reaped)"
        return f"exit {self.exit_code} after {self.duration:.1f} s"


@dataclass(frozen=True)
class _Account:
    """The user a tool runs as; `switch` is False when that is the service's own user."""

    name: str
    uid: int
    gid: int
    home: str
    switch: bool


def tool_environment(run_as: str | None, extra: Mapping[str, str]) -> dict[str, str]:
    """The complete environment of a tool: a fixed base, the user's HOME/USER/LOGNAME, `extra`.

    Nothing is inherited from os.environ: systemd's NOTIFY_SOCKET or WATCHDOG_* would let a tool
    impersonate the service, and a stray PGPASSWORD would reach every tool. `run_as` None means
    the service's own user. `extra` wins over the base, so a caller can set PATH deliberately.
    """
    env = {"PATH": TOOL_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    entry = _passwd_entry(run_as)
    if entry is not None:
        env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    env.update(extra)
    return env


def run_tool(
    spec: RunSpec,
    on_tick: Callable[[], str | None] | None = None,
    tick_interval: float = 1.0,
    on_start: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Run `spec` to completion, timeout or stop, and say how it ended.

    `on_start(pid, pgid)` runs once the tool has started. `on_tick()` runs about every
    `tick_interval` s; a string return stops the tool's tree with that reason. If a hook
    raises, the tree is killed before the exception propagates. A tool that exits by itself
    is not followed further: what it left running is not killed, only no longer read from.
    """
    if not tick_interval > 0:
        raise ValueError(f"tool {spec.tool_name}: tick_interval must be > 0")
    account = _resolve_account(spec)
    _check_executable(spec)
    env = tool_environment(account.name if account else None, spec.env)
    started = time.monotonic()
    proc = _start(spec, account, env)
    session = ToolSession(proc, spec.output_limit)
    try:
        if on_start is not None:
            on_start(proc.pid, proc.pid)  # start_new_session: the tool leads its own group
        timed_out, stopped_reason = session.watch(started + spec.timeout, on_tick, tick_interval)
        report = None
        if timed_out or stopped_reason is not None:
            report = session.kill(spec.kill_grace)
        peak_rss = session.reap()
    except BaseException:
        session.kill(spec.kill_grace)
        session.reap()
        raise
    finally:
        session.close()
    returncode = proc.returncode
    return RunResult(
        argv=spec.argv,
        exit_code=returncode if returncode is not None and returncode >= 0 else None,
        signal=-returncode if returncode is not None and returncode < 0 else None,
        timed_out=timed_out,
        stopped_reason=stopped_reason,
        duration=time.monotonic() - started,
        timeout=spec.timeout,
        stdout=session.stdout.freeze(),
        stderr=session.stderr.freeze(),
        peak_rss_bytes=peak_rss,
        kill_report=report,
    )


def _passwd_entry(name: str | None) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name) if name is not None else pwd.getpwuid(os.geteuid())
    except KeyError:
        return None


def _resolve_account(spec: RunSpec) -> _Account | None:
    """Who the tool runs as; None means as the service itself (no run_as given)."""
    if spec.run_as is None:
        return None
    target = _passwd_entry(spec.run_as)
    if target is None:
        raise RunAsError(
            f"tool {spec.tool_name}: run_as user {spec.run_as!r} does not exist on this host; create it or fix run_as"
        )
    euid = os.geteuid()
    account = _Account(
        name=target.pw_name, uid=target.pw_uid, gid=target.pw_gid, home=target.pw_dir, switch=target.pw_uid != euid
    )
    if account.switch and euid != 0:
        current = _passwd_entry(None)
        current_name = current.pw_name if current else f"uid {euid}"
        raise RunAsError(
            f"tool {spec.tool_name}: run_as {spec.run_as!r} needs the service to "
            f"run as root (it runs as {current_name!r}); remove run_as or run "
            "the service as root"
        )
    return account


def _check_executable(spec: RunSpec) -> None:
    # An absolute path, so PATH (and whatever a caller put in it) never chooses the binary.
    path = spec.argv[0]
    if not os.path.isabs(path):
        raise ToolStartError(
            f"tool {spec.tool_name}: {path!r} is not an absolute path; "
            "configure the tool's full path, e.g. /usr/bin/pg_dump"
        )
    if not os.path.isfile(path):
        raise ToolStartError(
            f"tool {spec.tool_name}: {path} does not exist or is not a file; install the tool or fix its path"
        )
    if not os.access(path, os.X_OK):
        raise ToolStartError(f"tool {spec.tool_name}: {path} is not executable")


def _start(spec: RunSpec, account: _Account | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
    user = group = extra_groups = None
    if account is not None and account.switch:
        # The full group list (it includes the primary gid), so none of root's groups remain.
        user, group = account.uid, account.gid
        extra_groups = os.getgrouplist(account.name, account.gid)
    who = f" as {account.name}" if account is not None else ""
    try:
        return subprocess.Popen(
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            # the service's own directory may be one the tool's user cannot enter
            cwd=spec.cwd or "/",
            close_fds=True,
            start_new_session=True,
            user=user,
            group=group,
            extra_groups=extra_groups,
            preexec_fn=_parent_death_signal(os.getpid()),
        )
    except (OSError, ValueError, subprocess.SubprocessError) as err:
        # the binary changed under us since the check above, or is no program: that stays so
        # until the host changes; anything else (fork or exec out of memory, too many
        # processes, a failed prctl) may pass. ValueError: an argv Popen refuses (a NUL byte).
        lasting = isinstance(err, ValueError) or (isinstance(err, OSError) and err.errno in _LASTING_ERRNOS)
        raise ToolStartError(
            f"tool {spec.tool_name}: cannot start {spec.argv[0]}{who}: {err}", retryable=not lasting
        ) from err


def _parent_death_signal(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn making the tool die with its worker, so no backup outlives its job.

    CPython runs preexec_fn after setgroups/setregid/setreuid (see _posixsubprocess.c); that
    order matters because a credential change clears the parent-death signal. The pdeathsig
    fires when the forking *thread* exits, one more reason the worker has no threads.
    """
    prctl = prctl_function()  # looked up before fork, not in the child
    sigkill = int(signal.SIGKILL)

    def set_parent_death_signal() -> None:
        if prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:
            os._exit(1)  # the worker died before prctl: the signal will never come

    return set_parent_death_signal


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown"
