"""The chaos layer's own PostgreSQL cluster: the soak restarts it (fast and immediate) and cuts its
connections, which the session's server, shared by the rest of the suite, must never see."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from helpers.cluster import IS_ROOT, Cluster
from pggit_supervisor import schema

DATABASES = ("alpha", "beta")


@pytest.fixture
def chaos_cluster() -> Iterator[Cluster]:
    """A cluster with the schema installed in each of DATABASES (two queues a fleet serves)."""
    cluster = Cluster(extra_conf="max_connections = 200\n")
    cluster.remove_when_this_process_ends()
    try:
        cluster.start()
        admin = psycopg2.connect(cluster.dsn)
        admin.autocommit = True
        for name in DATABASES:
            admin.cursor().execute(f"CREATE DATABASE {name}")
            schema.install(cluster.dsn_for(name), log=lambda *_: None)
        admin.close()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the postgres OS user can write (pg_dump runs as postgres), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="pggit-chaos-", dir="/tmp"))
    path.chmod(0o755)
    if IS_ROOT:
        shutil.chown(path, "postgres", "postgres")
    yield path
    shutil.rmtree(path, ignore_errors=True)
