"""A throwaway PostgreSQL cluster of a test's own, run as the postgres OS user on a free port:
for tests that restart the server or need archiving (pgBackRest, Barman)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_postgres(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Runs argv as the postgres OS user (initdb and postgres refuse root)."""
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                          check=True, **kwargs)


class Cluster:
    def __init__(self, extra_conf: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pggit-cluster-", dir="/tmp"))
        entry = pwd.getpwnam("postgres")
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.port = free_port()
        as_postgres(["mkdir", "-p", str(self.socket_dir)])
        as_postgres([str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.socket_dir}'\nwal_level = replica\n"
                       f"fsync = off\nmax_wal_senders = 10\n{extra_conf}\n")

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def pg_ctl(self, *args: str) -> None:
        as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"), "-w", *args])

    def start(self) -> "Cluster":
        self.pg_ctl("start")
        return self

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self.pg_ctl("-m", "fast", "restart")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D", str(self.data),
                            "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
