"""Fixtures every layer needs: the session's server, a fresh database per test (cloned from a
template that has the schema), logins, and directories other OS users can use.

The template is built once per session by our own installer (the same code as
`pggit-supervisor schema install`), so every test starts from exactly what a user installs.
The server is a throwaway cluster of the run's own (helpers/session.py says how to point the
run at another one).

Where a test goes (`make test` runs every layer; `make check` runs unit, sql and tools without
the tests marked slow or supervisor, see the Makefile):
- unit/     in-process, no database and no processes of ours: the supervisor's rules and pipe
            protocol, the settings declaration and loader, the prerequisites check
- sql/      the SQL API through real logins: queue, roles, guides, attacks on the SQL, schema
            install and migration, the session cluster
- service/  real `pggit-supervisor` processes and their workers: lifecycle, jobs, drills, the CLI
- tools/    the runner with a fake tool, each real tool adapter, the packaging files
- chaos/    fault injection on a cluster of the layer's own: the seeded soak of a fleet of
            supervisors under kills, restarts and cuts (short here, long by `make chaos`), and
            single faults (PostgreSQL down at start, a full disk, a missing tool, a reload)
- helpers/  modules more than one test imports (`from helpers.db import query`); never import
            from a conftest.py. A layer's own fixtures live in its conftest.py.
A test that starts a supervisor builds it with make_service (below), which marks it `supervisor`.
Test file names are unique across the layers: the layer directories are not packages, so pytest
imports each test module by its file name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql
from pytest_postgresql import factories

from helpers import prerequisites
from helpers.cluster import BIN, IS_ROOT, Cluster
from helpers.db import make_dsn
from helpers.service import Service
from helpers.session import DRILL_USER, OWN_SERVER, PG_HOST, PG_PORT, PG_USER, SESSION_SERVER_CONF
from helpers.webhook_server import Endpoint
from pggit_supervisor import sandbox, schema


def pytest_collection_modifyitems(items) -> None:
    """`make check` leaves out what starts a supervisor: the tests that build one with make_service."""
    for item in items:
        if "make_service" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.supervisor)


def _runs_no_tests(config) -> bool:
    """The controller of a parallel run (`pytest -n N`, as `make check` runs): its workers each
    start their own server and run the tests; the controller only hands them out."""
    return getattr(config, "workerinput", None) is None and bool(config.getoption("numprocesses", None))


def _is_xdist_worker(config) -> bool:
    return getattr(config, "workerinput", None) is not None


_made_drill_user = False


def pytest_sessionstart(session) -> None:
    global _made_drill_user
    absent = prerequisites.missing(BIN)
    if absent:
        pytest.exit(prerequisites.report(absent), returncode=pytest.ExitCode.USAGE_ERROR)
    if not _is_xdist_worker(session.config):
        # Restore drills run their sandbox as an unprivileged OS user of their own: created here,
        # once per run (not per parallel worker), as the package creates it when this machine
        # lacks it, and removed at the end if we made it.
        try:
            pwd.getpwnam(DRILL_USER)
        except KeyError:
            subprocess.run(sandbox.useradd_argv(DRILL_USER), check=True, capture_output=True)
            _made_drill_user = True
    if OWN_SERVER and not _runs_no_tests(session.config):
        cluster = Cluster(extra_conf=SESSION_SERVER_CONF, port=PG_PORT)
        cluster.remove_when_this_process_ends()
        atexit.register(cluster.remove)
        cluster.start()


def _install_schema(host, port, user, dbname, password, **_ignored):
    schema.install(make_dsn(host, port, user, dbname, password), log=lambda *_: None)


postgresql_server = factories.postgresql_noproc(
    host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=f"pggit_test_{os.getpid()}", load=[_install_schema]
)


def pytest_sessionfinish(session) -> None:
    if _made_drill_user:
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


@contextlib.contextmanager
def _cloned_database(server) -> Iterator[str]:
    """A fresh database cloned from the session's template (the installed schema), dropped
    afterwards whoever is still connected; yields its DSN.

    Cloned with STRATEGY FILE_COPY: copying the template's files takes about 0.14 s against 0.35 s
    for the default WAL_LOG, which writes every block of the template to the WAL; the
    clone is most of the cost of a SQL test."""
    name = f"pggit_t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(make_dsn(server.host, server.port, server.user, "postgres", server.password))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(server.template_dbname)
                )
            )
        yield make_dsn(server.host, server.port, server.user, name, server.password)
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        admin.close()


@pytest.fixture
def dsn(postgresql_server) -> Iterator[str]:
    """A fresh database for the test, cloned from the session's template (the installed schema)."""
    with _cloned_database(postgresql_server) as found:
        yield found


@pytest.fixture
def more_queue_dsns(postgresql_server) -> Iterator[Callable[[int], list[str]]]:
    """more_queue_dsns(n) -> n more fresh databases with the schema, besides the test's own `dsn`
    (a supervisor serving several databases); all dropped afterwards."""
    with contextlib.ExitStack() as stack:
        yield lambda count: [stack.enter_context(_cloned_database(postgresql_server)) for _ in range(count)]


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


@pytest.fixture
def make_service(tmp_path, dsn):
    """make_service(dsn=None, directory=None, **settings) -> a Service (not started yet) with its
    config in `directory` (default tmp_path), on the test's database unless `dsn` says otherwise;
    whatever each one left running is killed at the end of the test, whatever its outcome."""
    made: list[Service] = []

    def make(dsn: str | None = dsn, directory: Path | None = None, **settings) -> Service:
        service = Service(directory or tmp_path, dsn, **settings)
        made.append(service)
        return service

    yield make
    for service in made:
        service.cleanup()


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


@pytest.fixture
def webhook_endpoint():
    """webhook_endpoint(*answers) -> a local HTTP Endpoint (helpers/webhook_server.py) that
    answers each POST with the next of `answers`; all are closed after the test."""
    made: list[Endpoint] = []

    def make(*answers) -> Endpoint:
        made.append(Endpoint(*answers))
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()
