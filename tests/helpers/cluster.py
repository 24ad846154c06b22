"""A throwaway PostgreSQL cluster of a test's own on a free port: for the session's server (see
conftest.py) and for tests that restart the server or need archiving (pgBackRest, Barman).

As root the cluster runs as the postgres OS user (initdb and postgres refuse root); otherwise
as the current user. Its superuser is always called postgres.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
IS_ROOT = os.geteuid() == 0

# Waits until the process that started it is gone (its end of the pipe closes: normal exit, crash
# or SIGKILL alike), then stops the cluster and removes its directory.
_REAPER = """
import shutil, subprocess, sys
sys.stdin.read()
prefix, data, directory = sys.argv[1].split(), sys.argv[2], sys.argv[3]
subprocess.run([*prefix, sys.argv[4], "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
shutil.rmtree(directory, ignore_errors=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _owner_prefix() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if IS_ROOT else []


def as_postgres(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Runs argv as the clusters' OS user: postgres when root (initdb and postgres refuse root)."""
    return subprocess.run([*_owner_prefix(), *argv], capture_output=True, text=True, check=True, **kwargs)


class Cluster:
    def __init__(self, extra_conf: str = "", port: int | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pggit-cluster-", dir="/tmp"))
        if IS_ROOT:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.port = port or free_port()
        self._reaper: subprocess.Popen | None = None
        self._reaper_pipe: int | None = None
        as_postgres(["mkdir", "-p", str(self.socket_dir)])
        # C.UTF-8 always exists on Debian; the caller's LANG may name a locale that is not installed
        as_postgres(
            [
                str(BIN / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--locale=C.UTF-8",
                "--encoding=UTF8",
            ]
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.socket_dir}'\nwal_level = replica\n"
                f"fsync = off\nmax_wal_senders = 10\n{extra_conf}\n"
            )

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def pg_ctl(self, *args: str) -> None:
        as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"), "-w", *args])

    def start(self) -> Cluster:
        self.pg_ctl("start")
        return self

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self.pg_ctl("-m", "fast", "restart")

    def remove_when_this_process_ends(self) -> None:
        """Starts a reaper that removes the cluster once this process has ended, however it ended
        (atexit does not run after SIGKILL or a segfault); `remove` still works before that."""
        read_end, write_end = os.pipe()  # the write end is not inherited by later children
        self._reaper = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _REAPER,
                " ".join(_owner_prefix()),
                str(self.data),
                str(self.dir),
                str(BIN / "pg_ctl"),
            ],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # a Ctrl-C for the test run does not stop the clean-up
        os.close(read_end)
        self._reaper_pipe = write_end

    def remove(self) -> None:
        if self._reaper is not None and self._reaper_pipe is not None:
            os.close(self._reaper_pipe)  # the reaper stops the server and removes the directory
            self._reaper_pipe = None
            self._reaper.wait(60)
            return
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*_owner_prefix(), str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                capture_output=True,
            )
        shutil.rmtree(self.dir, ignore_errors=True)
