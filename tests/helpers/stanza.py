"""A throwaway cluster that archives into a pgBackRest stanza in its own directory, with the
schema installed: what the pgBackRest tests and bench/overhead.py's pgBackRest figure both need.
Always removed, with any pgbackrest process still running for it (archive-push, a backup of a
failed run)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from helpers.cluster import Cluster, as_postgres
from pggit_supervisor import schema

PGBACKREST = "/usr/bin/pgbackrest"


@dataclass(frozen=True)
class Stanza:
    cluster: Cluster
    conf: Path
    name: str

    def pgbackrest(self, *args: str) -> subprocess.CompletedProcess:
        return as_postgres([PGBACKREST, f"--config={self.conf}", f"--stanza={self.name}", *args])


@contextmanager
def stanza_cluster(name: str, repositories: Mapping[int, int], extra_conf: str = "") -> Iterator[Stanza]:
    """A started cluster archiving into stanza `name`; `repositories` maps each repository's
    number to its repo<N>-retention-full (repo1 always, others only for a test that needs them)."""
    cluster = Cluster(extra_conf="archive_mode = on\n" + extra_conf)
    try:
        conf = cluster.dir / "pgbackrest.conf"
        with open(cluster.data / "postgresql.conf", "a") as pg_conf:
            pg_conf.write(f"archive_command = '{PGBACKREST} --config={conf} --stanza={name} archive-push %p'\n")
        repos = "".join(
            f"repo{number}-path={cluster.dir}/{'repo' if number == 1 else f'repo{number}'}\n"
            f"repo{number}-retention-full={full}\n"
            for number, full in sorted(repositories.items())
        )
        conf.write_text(
            f"[{name}]\npg1-path={cluster.data}\npg1-port={cluster.port}\npg1-socket-path={cluster.socket_dir}\n\n"
            f"[global]\n{repos}start-fast=y\n"
            f"lock-path={cluster.dir}/lock\nlog-path={cluster.dir}/log\nspool-path={cluster.dir}/spool\n"
        )
        shutil.chown(conf, "postgres", "postgres")
        as_postgres(["mkdir", "-p", str(cluster.dir / "log")])
        cluster.start()
        stanza = Stanza(cluster, conf, name)
        stanza.pgbackrest("stanza-create")
        schema.install(cluster.dsn, log=lambda *_: None)
        yield stanza
    finally:
        try:
            cluster.stop()
        except subprocess.CalledProcessError:
            pass  # not started; remove() stops whatever is left
        kill_processes_under(cluster.dir)
        cluster.remove()


def kill_processes_under(directory: Path) -> None:
    """Whatever is still running for the cluster: its command line names the cluster's directory."""
    for proc in psutil.process_iter(["cmdline"]):
        if str(directory) in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
