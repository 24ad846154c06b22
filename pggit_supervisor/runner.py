"""Run one backup tool (pg_dump, pgbackrest, ...) as a subprocess, safely and observably.

Every tool the service starts goes through `run_tool`: argv only (never a shell), stdin closed, a
scrubbed environment, its own session, optionally another user, a parent-death signal (the last two
set by setpriv(1), so the worker vforks), bounded output capture, a timeout, and a caller hook to
renew a lease or stop the tool. One selector multiplexes output, ticks and the deadline, all on
the monotonic clock, in the worker's own thread (an adapter may run a helper thread meanwhile,
such as pg_dump's row counts; Popen has no preexec_fn, so starting a tool is safe beside it).
"""

from __future__ import annotations

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
# strerror() of those, as setpriv's err() prints them under LANG=C.UTF-8 (tool_environment);
# Python does not set LC_MESSAGES, so os.strerror gives the same C-locale texts
_LASTING_MESSAGES = tuple(os.strerror(number) for number in sorted(_LASTING_ERRNOS))
# util-linux's setpriv (Essential in Debian): the exec helper that sets the parent-death signal
SETPRIV = "/usr/bin/setpriv"
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
    # From wait4's ru_maxrss. Linux carries the pre-exec high-water mark into it (a vforked child
    # shares the worker's memory until its exec), so this is the larger of the tool's peak and
    # the worker's RSS when it started the tool: exact for any tool bigger than the worker, an
    # upper bound otherwise. None if the tool could not be reaped.
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
    stderr = session.stderr.freeze()  # once: up to two output_limit copies
    failure = _helper_failure(spec, account, returncode, stderr.text())
    if failure is not None:
        raise failure
    return RunResult(
        argv=spec.argv,
        exit_code=returncode if returncode is not None and returncode >= 0 else None,
        signal=-returncode if returncode is not None and returncode < 0 else None,
        timed_out=timed_out,
        stopped_reason=stopped_reason,
        duration=time.monotonic() - started,
        timeout=spec.timeout,
        stdout=session.stdout.freeze(),
        stderr=stderr,
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


def _helper_argv(spec: RunSpec, account: _Account | None) -> list[str]:
    """The argv that starts the tool through setpriv(1): it sets the parent-death signal after
    the credential change (util-linux 2.38 setpriv.c: setresuid, setresgid, setgroups, then
    prctl(PR_SET_PDEATHSIG), then execvp; a credential change would clear the signal), so the
    worker's Popen needs no preexec_fn and no user/group arguments and CPython vforks instead of
    copying the worker (issue 12: fork was half of a no-op job's CPU). The tool's argv follows
    `--` unchanged; an absolute path, so setpriv's execvp searches no PATH."""
    helper = [SETPRIV, "--pdeathsig", "KILL"]
    if account is not None and account.switch:
        # The full group list (it includes the primary gid), so none of root's groups remain.
        groups = os.getgrouplist(account.name, account.gid)
        helper += ["--reuid", str(account.uid), "--regid", str(account.gid)]
        helper += ["--groups", ",".join(str(gid) for gid in groups)]
    return [*helper, "--", *spec.argv]


def _as_whom(account: _Account | None) -> str:
    """' as <user>' for a start failure's message when the tool runs as a user of its own."""
    return f" as {account.name}" if account is not None else ""


def _start(spec: RunSpec, account: _Account | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            _helper_argv(spec, account),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            # the service's own directory may be one the tool's user cannot enter
            cwd=spec.cwd or "/",
            close_fds=True,
            start_new_session=True,
        )
    except (OSError, ValueError, subprocess.SubprocessError) as err:
        # setpriv itself is missing (util-linux is Essential: the host is broken) or the argv is
        # no program (ValueError: a NUL byte): that stays so until the host changes; anything
        # else (vfork or exec out of memory, too many processes) may pass.
        lasting = isinstance(err, ValueError) or (isinstance(err, OSError) and err.errno in _LASTING_ERRNOS)
        raise ToolStartError(
            f"tool {spec.tool_name}: cannot start {spec.argv[0]}{_as_whom(account)}: {err}", retryable=not lasting
        ) from err


def _helper_failure(
    spec: RunSpec, account: _Account | None, returncode: int | None, stderr: str
) -> ToolStartError | None:
    """setpriv's own failure, told apart from the tool's exit: setpriv exits 127 when it cannot
    set the credentials or the signal (SETPRIV_EXIT_PRIVERR) and 126/127 when its exec of the tool
    fails (errexec: 127 for ENOENT), each time with one line 'setpriv: ...' on stderr and nothing
    else, since the tool never ran. A binary that vanished or lost its x bit between
    `_check_executable` and the exec stays a ToolStartError as before, retryable unless lasting."""
    if returncode not in (126, 127):
        return None
    lines = stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("setpriv: "):
        return None
    message = lines[0].removeprefix("setpriv: ")
    exec_failed = message.startswith(f"failed to execute {spec.argv[0]}: ")
    # its credential and prctl failures exit 127 with '<step> failed: <strerror>'
    if not exec_failed and not (returncode == 127 and " failed: " in message):
        return None
    lasting = exec_failed and message.endswith(_LASTING_MESSAGES)
    return ToolStartError(
        f"tool {spec.tool_name}: cannot start {spec.argv[0]}{_as_whom(account)}: {message}", retryable=not lasting
    )


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown"
