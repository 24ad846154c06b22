"""What the host must give a restore drill before its sandbox is made: the unprivileged drill
user, unprivileged user and network namespaces, and PostgreSQL's server binaries. Each check
fails for good with the command that fixes it (the operator's to run; a retry cannot help)."""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import stat

from .errors import invalid
from .runner import RunResult

# the drill user as the Debian package's sysusers.d entry makes it (the error that names a missing
# one, the tests and the demo all use this one argv)
USERADD_ARGV = (
    "useradd",
    "--system",
    "--user-group",
    "--no-create-home",
    "--home-dir",
    "/nonexistent",
    "--shell",
    "/usr/sbin/nologin",
    "--comment",
    "pgGit restore drills",
)
USERADD = shlex.join(USERADD_ARGV)


# the namespaces the drill's server runs in; without --fork, unshare execs the command in place
UNSHARE_ARGV = ("/usr/bin/unshare", "--user", "--map-current-user", "--net", "--")
# the sysctls that switch off unprivileged user namespaces (the first one only on Debian's and
# Ubuntu's kernels), with the value each needs
_USERNS_SYSCTLS = (
    ("kernel.unprivileged_userns_clone", "1"),
    ("user.max_user_namespaces", "a positive number, e.g. 15000"),
)
_NAMESPACE_HINT = (
    " (the drill's server runs in a user and network namespace of its own, so that code in a backup "
    "reaches no server over the network; unprivileged user namespaces must be allowed: sysctl "
    "kernel.unprivileged_userns_clone = 1 where it exists, user.max_user_namespaces > 0, "
    "kernel.apparmor_restrict_unprivileged_userns = 0 where it exists, and RestrictNamespaces=user net "
    "in a systemd unit)"
)


def useradd_argv(user: str) -> list[str]:
    """The argv that creates `user` as an unprivileged drill user."""
    return [*USERADD_ARGV, user]


def drill_account(user: str) -> pwd.struct_passwd:
    """The drill user's passwd entry; a missing user is the operator's to create."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise invalid(
            f"drill user {user!r} does not exist: restore drills run their throwaway "
            f"cluster as that unprivileged user; create it with `{USERADD} {user}` "
            "(the Debian package does) or set drill_user"
        ) from None
    if entry.pw_uid == 0:
        raise invalid(
            f"drill user {user!r} is root: a drill must run as an unprivileged user "
            f"of its own; create one with `{USERADD} pggit-drill`"
        )
    return entry


def check_namespaces(proc_sys: str = "/proc/sys") -> None:
    """Refuses a drill on a host where the drill's server could not get its own network
    namespace: a drill never runs without that isolation."""
    for name, wanted in _USERNS_SYSCTLS:
        value = read_own_file(os.path.join(proc_sys, *name.split(".")), 64).strip()
        if value == "0":
            raise invalid(
                f"unprivileged user namespaces are switched off on this host (sysctl {name} = 0): "
                "a restore drill runs its server in a network namespace of its own, made by the "
                f"drill user, so that code in a backup reaches no server over the network; set "
                f"{name} to {wanted} (`sysctl -w {name}=...` and a file in /etc/sysctl.d) to run drills"
            )


def namespace_hint(result: RunResult) -> str:
    """What to add to a failed server start that unshare refused (systemd's RestrictNamespaces,
    an AppArmor restriction, a limit reached): the fix, not only "Operation not permitted"."""
    return _NAMESPACE_HINT if "unshare" in result.stderr.text() else ""


def server_bin_dir(tool_path: str | None) -> str:
    """The server binaries (initdb, pg_ctl) next to the configured tool, else the newest
    installed: Debian's /usr/bin/pg_dump is a wrapper, the servers live in /usr/lib/postgresql."""
    if tool_path:
        real = os.path.dirname(os.path.realpath(tool_path))
        if os.path.exists(os.path.join(real, "initdb")):
            return real
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0,
    )
    if not found:
        raise invalid(
            "no PostgreSQL server binaries (initdb) found: restore drills start a "
            "throwaway cluster; install the postgresql package"
        )
    return os.path.dirname(found[-1])


def read_own_file(path: str, limit: int) -> str:
    """Reads (as root) a file the drill user could have replaced: never through a link, never
    a FIFO or device that would block or feed us forever; '' when it is anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return ""
        return handle.read(limit).decode("utf-8", errors="replace")
