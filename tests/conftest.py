"""Shared fixtures: a fresh database per test, cloned from a template that has the schema.

The template is built once per session by our own installer (the same code as
`pggit-supervisor schema install`), so every test starts from exactly what a user installs.

The server is a throwaway cluster of the run's own (trust auth on a free port, removed at the
end, even after a crash), so the tests do not depend on how the machine's PostgreSQL is set up.
PGGIT_TEST_PGHOST / PGGIT_TEST_PGPORT / PGGIT_TEST_PGUSER point the run at a server instead.
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extras
import pytest
from psycopg2 import sql
from pytest_postgresql import factories

import prerequisites
from cluster import BIN, IS_ROOT, Cluster, free_port
from pggit_supervisor import sandbox, schema

_SERVER_VARIABLES = ("PGGIT_TEST_PGHOST", "PGGIT_TEST_PGPORT", "PGGIT_TEST_PGUSER")
OWN_SERVER = not any(os.environ.get(name) for name in _SERVER_VARIABLES)
PG_HOST = os.environ.get("PGGIT_TEST_PGHOST") or "127.0.0.1"
# The session cluster's port is chosen now, so modules can import it; the cluster starts at
# session start (pytest_sessionstart), after the check for missing tools.
PG_PORT = free_port() if OWN_SERVER else int(os.environ.get("PGGIT_TEST_PGPORT") or "5432")
PG_USER = os.environ.get("PGGIT_TEST_PGUSER") or "postgres"
DRILL_USER = "pggit-drill"  # the default drill_user, which the Debian package creates
# Enough for the concurrency tests; wal_level and wal senders (in Cluster) for pg_basebackup.
SESSION_SERVER_CONF = "max_connections = 200\n"

# What a test runs as another OS user must be readable by that user, wherever the checkout is
# (a checkout under /root, mode 0700, is not): a copy in a directory everyone can read.
_SHARED_DIR = Path(tempfile.mkdtemp(prefix="pggit-test-shared-", dir="/tmp"))
os.chmod(_SHARED_DIR, 0o755)
atexit.register(shutil.rmtree, _SHARED_DIR, ignore_errors=True)
FAKE_TOOL = str(_SHARED_DIR / "fake_tool.py")
shutil.copy(Path(__file__).with_name("fake_tool.py"), FAKE_TOOL)
os.chmod(FAKE_TOOL, 0o755)


def pytest_sessionstart(session) -> None:
    absent = prerequisites.missing(BIN)
    if absent:
        pytest.exit(prerequisites.report(absent), returncode=pytest.ExitCode.USAGE_ERROR)
    if OWN_SERVER:
        cluster = Cluster(extra_conf=SESSION_SERVER_CONF, port=PG_PORT)
        cluster.remove_when_this_process_ends()
        atexit.register(cluster.remove)
        cluster.start()


def make_dsn(host, port, user, dbname, password=None) -> str:
    parts = [f"host={host}", f"port={port}", f"user={user}", f"dbname={dbname}"]
    if password:
        parts.append(f"password={password}")
    return " ".join(parts)


def _install_schema(host, port, user, dbname, password, **_ignored):
    schema.install(make_dsn(host, port, user, dbname, password), log=lambda *_: None)


postgresql_server = factories.postgresql_noproc(
    host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=f"pggit_test_{os.getpid()}", load=[_install_schema]
)
postgresql = factories.postgresql("postgresql_server")


@pytest.fixture(scope="session", autouse=True)
def drill_user():
    """Restore drills run their sandbox as an unprivileged OS user of their own: created here
    as the package creates it when this machine lacks it, and removed again if we made it."""
    try:
        pwd.getpwnam(DRILL_USER)
        created = False
    except KeyError:
        subprocess.run(sandbox.useradd_argv(DRILL_USER), check=True, capture_output=True)
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


@pytest.fixture
def login_as(dsn, db):
    """login_as(*roles) -> (autocommit connection, name) of a new LOGIN role that is a member of
    `roles` (none: a login with no pggit role, like PUBLIC). What it owned and the role go afterwards."""
    created: list[str] = []
    opened = []

    def _login_as(*roles: str | None):
        name = f"pggit_t_{secrets.token_hex(6)}"
        with db.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
            created.append(name)
            for role in filter(None, roles):
                cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(name)))
        conn = psycopg2.connect(dsn, user=name)
        conn.autocommit = True
        opened.append(conn)
        return conn, name

    yield _login_as
    for conn in opened:
        conn.close()
    with db.cursor() as cur:
        for name in created:
            cur.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(name)))
            cur.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def login(login_as):
    """login(role) -> autocommit connection of a new LOGIN role IN ROLE `role`."""
    return lambda role: login_as(role)[0]


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
    if IS_ROOT:
        shutil.chown(path, "postgres", "postgres")
    yield path
    shutil.rmtree(path, ignore_errors=True)
