"""Shared fixtures: a fresh database per test, cloned from a template that has the schema.

The template is built once per session by our own installer (the same code as
`pggit-supervisor schema install`), so every test starts from exactly what a user installs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extras
import pytest
from pytest_postgresql import factories

from pggit_supervisor import schema

PG_HOST = os.environ.get("PGGIT_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PGGIT_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("PGGIT_TEST_PGUSER", "postgres")
DRILL_USER = "pggit-drill"  # the default drill_user, which the Debian package creates


def make_dsn(host, port, user, dbname, password=None) -> str:
    parts = [f"host={host}", f"port={port}", f"user={user}", f"dbname={dbname}"]
    if password:
        parts.append(f"password={password}")
    return " ".join(parts)


def _install_schema(host, port, user, dbname, password, **_ignored):
    schema.install(make_dsn(host, port, user, dbname, password), log=lambda *_: None)


postgresql_server = factories.postgresql_noproc(
    host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=f"pggit_test_{os.getpid()}", load=[_install_schema])
postgresql = factories.postgresql("postgresql_server")


@pytest.fixture(scope="session", autouse=True)
def drill_user():
    """Restore drills run their sandbox as an unprivileged OS user of their own: created here
    as the package creates it when this machine lacks it, and removed again if we made it."""
    try:
        pwd.getpwnam(DRILL_USER)
        created = False
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--comment", "pgGit restore drills", DRILL_USER],
                       check=True, capture_output=True)
        created = True
    yield DRILL_USER
    if created:
        subprocess.run(["userdel", DRILL_USER], capture_output=True)


@pytest.fixture
def drill_tmpdir():
    """A TMPDIR of the test's own for a supervisor's drill sandboxes (the drill user must be
    able to enter it: pytest's tmp_path is private to root), so that what a test finds there
    is its own drills' leftovers and nobody else's."""
    path = Path(tempfile.mkdtemp(prefix="pggit-drilltmp-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dsn(postgresql) -> str:
    info = postgresql.info
    return make_dsn(info.host, info.port, info.user, info.dbname)


@pytest.fixture
def connect(dsn):
    """Opens autocommit psycopg2 connections to the test database; closes them afterwards."""
    opened = []

    def _connect(**kwargs):
        conn = psycopg2.connect(dsn, **kwargs)
        conn.autocommit = True
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def db(connect):
    return connect()


def query(conn, sql, params=None):
    """All rows as dicts."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


@pytest.fixture
def empty_db():
    """A new, empty database (not from the schema template); dropped afterwards."""
    name = "pggit_empty_" + uuid.uuid4().hex[:10]
    admin = psycopg2.connect(make_dsn(PG_HOST, PG_PORT, PG_USER, "postgres"))
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_dsn(PG_HOST, PG_PORT, PG_USER, name)
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def backup_dir():
    """A directory the postgres OS user can write (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pggit-backups-", dir="/tmp"))
    shutil.chown(path, "postgres", "postgres")
    yield path
    shutil.rmtree(path, ignore_errors=True)
