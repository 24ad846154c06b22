"""The restore drill's sandbox: a throwaway PostgreSQL cluster that holds nothing of value.

A dump carries functions written by whoever could create objects in the backed-up database,
and restoring it runs them (CHECK constraints while rows load, index expressions while indexes
build). So a drill never restores into a real server or as a real role: it restores into a
cluster of its own, run by a dedicated unprivileged OS user (`drill_user`, by default
pggit-drill), reachable only through a Unix socket in a private directory, and deleted when the
drill ends. Hostile code then owns the superuser of an empty cluster, as an OS user that owns
nothing, for a few minutes.

That superuser can run shell commands (COPY ... TO PROGRAM), and the OS user could reach every
server on the machine over TCP, where a `host ... trust` line would let it in as anyone. So the
server (the postmaster and every backend, which run the dump's code) is started in a network
namespace of its own, with no interface up: no TCP or UDP to anywhere, loopback included, and no
abstract Unix sockets of the host. `unshare` makes it as the drill user, in a user namespace of
its own where that user maps to itself (postgres's "not root" and data-directory ownership
checks see the same uid); the worker still reaches the server through the socket file in `run/`,
which a path reaches from any namespace. What the server can still reach: the host's Unix socket
files by path (where peer authentication maps to the drill user, a role no server has, unless a
`local ... trust` line lets anyone in) and the files any user may read.

Layout of one sandbox, under $TMPDIR (the unit sets /var/lib/pggit/tmp):

    pggit-drill-XXXX/            root, 0755; flock()ed by the worker for the drill's life
      postgresql.conf, pg_hba.conf, pg_ident.conf   root, 0644: the settings the drill imposes
      data/                      drill user, 0700: the cluster (initdb, or the base backup copy)
      input/                     drill user, read-only: the copy of the dump being drilled
      run/                       drill user, 0700: the socket and the server log

A worker killed mid-drill leaves its directory unlocked: the next drill on the host stops
what may still run there and removes it (`sweep_stale`); the supervisor, the tools' subreaper,
has already killed the orphaned server.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shlex
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg2

from .errors import invalid, one_line
from .rows import one_row
from .runner import RunSpec, run_tool
from .sandbox_host import (
    UNSHARE_ARGV,
    USERADD,
    check_namespaces,
    drill_account,
    namespace_hint,
    read_own_file,
    server_bin_dir,
    useradd_argv,
)

# the host's checks, used by the drill and the tests through this module
__all__ = [
    "UNSHARE_ARGV",
    "USERADD",
    "Sandbox",
    "check_namespaces",
    "create",
    "drill_account",
    "namespace_hint",
    "remove",
    "server_bin_dir",
    "useradd_argv",
    "wait_ready",
]

PREFIX = "pggit-drill-"
_NEW_PREFIX = ".pggit-drill-new-"
# the superuser initdb creates in a dump drill's cluster
SUPERUSER = "pggit_drill"
READY_TIMEOUT_SECONDS = 300.0
STOP_TIMEOUT_SECONDS = 60.0
_READY_POLL_SECONDS = 0.25
# a new sandbox is locked within microseconds of being made: one older than this was abandoned
_STAGING_GRACE_SECONDS = 600
# Settings every sandbox runs with, whatever the copied cluster had. The ones that decide who
# can reach the server or what it runs are also given on the command line, which beats every
# file (postgresql.auto.conf of a copied cluster included).
_CONF = """# written by pggit-supervisor for one restore drill; removed with it
listen_addresses = ''
shared_buffers = '32MB'
max_connections = 20
max_wal_senders = 0
archive_mode = off
hot_standby = off
fsync = off
synchronous_commit = off
full_page_writes = off
autovacuum = off
logging_collector = off
shared_preload_libraries = ''
"""
_HBA = "# restore drill: trust, over the private Unix socket only\nlocal all all trust\n"


class DirLock:
    """The open directory whose flock marks a sandbox in use; released once, by `release`
    (a second release must not close a descriptor number reused since)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@dataclass(frozen=True)
class Sandbox:
    """One drill's throwaway cluster. `lock` holds the flock that marks it in use."""

    root: str
    user: str
    bin_dir: str
    port: int
    lock: DirLock = field(compare=False, repr=False)

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def input(self) -> str:
        return os.path.join(self.root, "input")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root, "run")

    @property
    def log(self) -> str:
        return os.path.join(self.run_dir, "postgres.log")

    def dsn(self, user: str, dbname: str) -> str:
        return psycopg2.extensions.make_dsn(
            host=self.run_dir, port=self.port, user=user, dbname=dbname, connect_timeout=10
        )

    def libpq_env(self, user: str, dbname: str) -> dict[str, str]:
        """What a client tool run as the drill user needs to reach this cluster, and no more."""
        return {
            "PGHOST": self.run_dir,
            "PGPORT": str(self.port),
            "PGUSER": user,
            "PGDATABASE": dbname,
            "PGCONNECT_TIMEOUT": "10",
        }

    def initdb_argv(self) -> list[str]:
        return [
            os.path.join(self.bin_dir, "initdb"),
            "-D",
            self.data,
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        ]

    def start_argv(self) -> list[str]:
        settings = {
            "config_file": self._file("postgresql.conf"),
            "hba_file": self._file("pg_hba.conf"),
            "ident_file": self._file("pg_ident.conf"),
            "listen_addresses": "",
            "port": str(self.port),
            "unix_socket_directories": self.run_dir,
            "unix_socket_permissions": "0700",
        }
        # pg_ctl hands -o to /bin/sh: every value is quoted for it
        options = " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in settings.items())
        # unshare becomes pg_ctl, whose postmaster and backends inherit the empty network namespace
        return [
            *UNSHARE_ARGV,
            os.path.join(self.bin_dir, "pg_ctl"),
            "-D",
            self.data,
            "-l",
            self.log,
            "-o",
            options,
            "-w",
            "-t",
            str(int(READY_TIMEOUT_SECONDS)),
            "start",
        ]

    def _file(self, name: str) -> str:
        return os.path.join(self.root, name)


def create(user: str, bin_dir: str, port: int | None = None) -> Sandbox:
    """Makes the sandbox directories (locked before they get their visible name) and its
    settings; the cluster itself is made by initdb or a base backup copy."""
    entry = drill_account(user)
    check_namespaces()
    sweep_stale(user)
    parent = tempfile.gettempdir()
    staging = tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=parent)
    lock_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        os.chmod(staging, 0o755)
        for name, text in (("postgresql.conf", _CONF), ("pg_hba.conf", _HBA), ("pg_ident.conf", "")):
            with open(os.path.join(staging, name), "x") as handle:
                handle.write(text)
        for name in ("data", "run", "input"):
            path = os.path.join(staging, name)
            os.mkdir(path, 0o700)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        root = staging.replace(_NEW_PREFIX, PREFIX, 1)
        os.rename(staging, root)  # the same inode: it appears already locked
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock_fd)
        raise
    return Sandbox(root=root, user=user, bin_dir=bin_dir, port=port or free_port(), lock=DirLock(lock_fd))


def give_tree(path: str, user: str, mode_files: int | None = None, mode_dirs: int | None = None) -> None:
    """chown a copied tree to the drill user without following any link in it."""
    entry = drill_account(user)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            full = os.path.join(root, name)
            os.chown(full, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
            if not os.path.islink(full):
                wanted = mode_dirs if name in dirs else mode_files
                if wanted is not None:
                    os.chmod(full, wanted)
    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    if mode_dirs is not None and not os.path.islink(path) and os.path.isdir(path):
        os.chmod(path, mode_dirs)


def forget_copied_settings(data_dir: str) -> None:
    """A copied cluster keeps nothing that could reach out or wait for a primary: no ALTER
    SYSTEM settings, no standby or recovery signal."""
    for name in ("standby.signal", "recovery.signal", "postgresql.auto.conf"):
        path = os.path.join(data_dir, name)
        if os.path.lexists(path):
            os.unlink(path)


def wait_ready(
    sandbox: Sandbox,
    user: str,
    deadline_seconds: float = READY_TIMEOUT_SECONDS,
    checkpoint: Callable[[], None] | None = None,
) -> None:
    """Returns once the server accepts connections and has finished recovery (a base backup
    copy replays its WAL first; until then it answers 'not accepting connections')."""
    deadline = time.monotonic() + deadline_seconds
    last = "no answer yet"
    while True:
        try:
            conn = psycopg2.connect(sandbox.dsn(user, "postgres"))
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_is_in_recovery()")
                    if not one_row(cur)[0]:
                        return
                    last = "still in recovery"
            finally:
                conn.close()
        except psycopg2.OperationalError as exc:
            last = one_line(exc)
        if not os.path.exists(os.path.join(sandbox.data, "postmaster.pid")):
            raise invalid(f"the drill's server stopped while starting ({last}){log_tail(sandbox)}")
        if time.monotonic() > deadline:
            raise invalid(
                f"the drill's server did not finish recovery within {deadline_seconds:g} s ({last}){log_tail(sandbox)}"
            )
        if checkpoint is not None:
            checkpoint()
        time.sleep(_READY_POLL_SECONDS)


def remove(sandbox: Sandbox) -> None:
    """Stops the cluster (if it runs) and deletes every file of the sandbox; a second call
    finds nothing left to do."""
    try:
        _stop(sandbox.root, sandbox.user, sandbox.bin_dir)
        shutil.rmtree(sandbox.root, ignore_errors=True)
    finally:
        sandbox.lock.release()


def sweep_stale(user: str) -> list[str]:
    """Removes the sandboxes of drills whose worker died (their directory is no longer
    locked), stopping a server that may still run there. Returns what was removed."""
    removed = []
    parent = tempfile.gettempdir()
    # a worker killed between making a sandbox and locking it leaves an unlocked new one
    for staging in glob.glob(os.path.join(parent, _NEW_PREFIX + "*")):
        try:
            if time.time() - os.lstat(staging).st_mtime > _STAGING_GRACE_SECONDS:
                os.rename(staging, staging.replace(_NEW_PREFIX, PREFIX, 1))
        except OSError:
            pass
    for root in glob.glob(os.path.join(parent, PREFIX + "*")):
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live drill
            _stop(root, user, None)
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
        finally:
            os.close(fd)
    return removed


def _stop(root: str, user: str, bin_dir: str | None) -> None:
    data = os.path.join(root, "data")
    if not os.path.exists(os.path.join(data, "postmaster.pid")):
        return
    # the copy's own version's pg_ctl, when the data directory says which
    bin_dir = _bin_dir_of(data) or bin_dir
    if bin_dir is None:
        return
    try:
        run_tool(
            RunSpec(
                (os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"),
                {},
                STOP_TIMEOUT_SECONDS,
                run_as=user,
                cwd=root,
                kill_grace=5,
            )
        )
    except Exception:  # a missing user or binary: nothing we started can be running then
        pass


def _bin_dir_of(data: str) -> str | None:
    version = read_own_file(os.path.join(data, "PG_VERSION"), 16).strip()
    path = f"/usr/lib/postgresql/{version}/bin"
    return path if version.isdigit() and os.path.isdir(path) else None


def log_tail(sandbox: Sandbox, lines: int = 5) -> str:
    text = read_own_file(sandbox.log, 1 << 20)
    return " | log: " + " | ".join(text[-8192:].splitlines()[-lines:]) if text else ""


def free_port() -> int:
    """A port no one listens on now; the sandbox binds no TCP port, but postgres names its
    socket file after the port, and a unique number keeps two drills' lock files apart."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
