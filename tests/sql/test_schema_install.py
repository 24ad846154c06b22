"""Installing and upgrading the schema: psql -f schema/install.sql and `pggit-supervisor schema`."""

import re
import shutil
import subprocess
from pathlib import Path

import psycopg2

from helpers import CLI
from helpers.db import query, scalar
from pggit_supervisor import __version__, schema

ROOT = Path(__file__).resolve().parents[2]


def _psql_install(dsn):
    return subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", "schema/install.sql"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def _fingerprint(dsn):
    """What the schema consists of: objects, function bodies, grants, seeded rows."""
    conn = psycopg2.connect(dsn)
    try:
        return (
            query(
                conn,
                """SELECT p.oid::regprocedure::text AS fn, md5(pg_get_functiondef(p.oid)) AS body,
                                  p.proacl::text AS acl
                             FROM pg_proc p WHERE p.pronamespace = 'pggit'::regnamespace ORDER BY 1""",
            ),
            query(
                conn,
                """SELECT c.relname, c.relkind, c.relacl::text AS acl FROM pg_class c
                            WHERE c.relnamespace = 'pggit'::regnamespace ORDER BY 1""",
            ),
            query(conn, "SELECT name, head_commit_hash FROM pggit.branches ORDER BY name"),
            query(conn, "SELECT count(*) AS commits FROM pggit.commits"),
            query(conn, "SELECT version, name FROM pggit.backup_schema_migrations ORDER BY version"),
        )
    finally:
        conn.close()


def test_psql_install_twice_succeeds_and_changes_nothing(empty_db):
    first = _psql_install(empty_db)
    assert first.returncode == 0, first.stderr
    before = _fingerprint(empty_db)
    second = _psql_install(empty_db)
    assert second.returncode == 0, second.stderr
    assert "ERROR" not in second.stderr
    assert _fingerprint(empty_db) == before
    assert [m["version"] for m in before[4]] == [m.version for m in schema.migrations()]


def test_cli_install_equals_psql_install_and_is_idempotent(empty_db, dsn):
    out = subprocess.run(CLI + ["schema", "install", "--dsn", empty_db], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    newest = schema.migrations()[-1].version
    assert f"schema version {newest} installed" in out.stdout
    again = subprocess.run(CLI + ["schema", "install", "--dsn", empty_db], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and "0 file(s) applied now" in again.stdout
    status = subprocess.run(CLI + ["schema", "status", "--dsn", empty_db], capture_output=True, text=True, cwd=ROOT)
    assert status.returncode == 0 and f"installed version: {newest}" in status.stdout
    cli, psql_made = _fingerprint(empty_db), _fingerprint(dsn)
    # same functions, bodies, grants and relations as the template built the same way
    assert cli[0] == psql_made[0] and cli[1] == psql_made[1]


def test_install_upgrades_an_older_database_in_place(empty_db, tmp_path):
    older = tmp_path / "older"
    older.mkdir()
    for path in sorted((ROOT / "schema").glob("*.sql"))[:4]:  # bootstrap + 001..003
        shutil.copy(path, older)
    assert [m.version for m in schema.install(empty_db, older, log=lambda *_: None)] == [1, 2, 3]
    installed, newest, pending = schema.status(empty_db)
    assert installed == 3 and newest > 3 and pending
    behind = subprocess.run(CLI + ["schema", "status", "--dsn", empty_db], capture_output=True, text=True, cwd=ROOT)
    assert behind.returncode == 3 and "pending: 004_scheduling" in behind.stdout
    applied = schema.install(empty_db, log=lambda *_: None)
    assert [m.version for m in applied] == [m.version for m in schema.migrations() if m.version > 3]
    conn = psycopg2.connect(empty_db)
    try:
        assert scalar(conn, "SELECT pggit.backup_pg_dump('main') IS NOT NULL")
    finally:
        conn.close()


def test_existing_pggit_core_is_kept(empty_db):
    conn = psycopg2.connect(empty_db)
    conn.autocommit = True
    conn.cursor().execute("""
        CREATE SCHEMA pggit;
        CREATE TABLE pggit.branches (id serial PRIMARY KEY, name text UNIQUE NOT NULL, head_commit_hash text);
        CREATE TABLE pggit.commits (id serial PRIMARY KEY, hash text UNIQUE NOT NULL, branch_id int, message text);
        INSERT INTO pggit.branches (name, head_commit_hash) VALUES ('main', 'abc123');
        INSERT INTO pggit.commits (hash, branch_id, message) VALUES ('abc123', 1, 'real pgGit commit');""")
    schema.install(empty_db, log=lambda *_: None)
    assert scalar(conn, "SELECT head_commit_hash FROM pggit.branches WHERE name = 'main'") == "abc123"
    assert scalar(conn, "SELECT count(*) FROM pggit.commits") == 1
    backup_id = scalar(conn, "SELECT pggit.backup_pg_dump('main')")
    assert scalar(conn, "SELECT commit_hash FROM pggit.backups WHERE backup_id = %s", (backup_id,)) == "abc123"
    conn.close()


def test_install_sql_applies_every_numbered_file_in_order():
    text = (ROOT / "schema" / "install.sql").read_text()
    included = re.findall(r"^\\ir (\d{3}_\w+\.sql)$", text, re.M)
    guarded = [int(v) for v in re.findall(r"WHERE version = (\d+)\) AS pggit_apply", text)]
    files = [m.path.name for m in schema.migrations()]
    assert included == ["000_bootstrap.sql"] + files
    assert guarded == [m.version for m in schema.migrations()]
    for migration in schema.migrations():
        assert f"VALUES ({migration.version}, '{migration.name}')" in migration.path.read_text(), (
            f"{migration.name} must record its own version"
        )


def test_cli_version_help_and_database_errors():
    version = subprocess.run(CLI + ["--version"], capture_output=True, text=True, cwd=ROOT)
    assert version.returncode == 0 and version.stdout.strip() == f"pggit-supervisor {__version__}"
    helptext = subprocess.run(CLI + ["--help"], capture_output=True, text=True, cwd=ROOT)
    assert helptext.returncode == 0 and "schema" in helptext.stdout
    bad = subprocess.run(
        CLI + ["schema", "status", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("pggit-supervisor: database error:")
    assert "Traceback" not in bad.stderr


def test_a_real_pggit_installs_grants_on_its_own_schema_and_tables_are_kept(empty_db):
    conn = psycopg2.connect(empty_db)
    conn.autocommit = True
    conn.cursor().execute("""
        CREATE SCHEMA pggit;
        GRANT USAGE ON SCHEMA pggit TO PUBLIC;
        CREATE TABLE pggit.branches (id serial PRIMARY KEY, name text UNIQUE NOT NULL, head_commit_hash text);
        CREATE TABLE pggit.commits (id serial PRIMARY KEY, hash text UNIQUE NOT NULL, branch_id int, message text);
        GRANT SELECT ON pggit.commits TO PUBLIC;
        CREATE FUNCTION pggit._core_helper() RETURNS int LANGUAGE sql AS 'SELECT 1';""")
    schema.install(empty_db, log=lambda *_: None)
    assert scalar(conn, "SELECT has_schema_privilege('public', 'pggit', 'USAGE')") is True
    assert scalar(conn, "SELECT has_table_privilege('public', 'pggit.commits', 'SELECT')") is True
    assert scalar(conn, "SELECT has_function_privilege('public', 'pggit._core_helper()', 'EXECUTE')") is True
    assert scalar(conn, "SELECT has_table_privilege('public', 'pggit.backup_jobs', 'SELECT')") is False
    assert (
        scalar(
            conn,
            "SELECT has_function_privilege('public', 'pggit.backup_pg_dump(text,text,text,text,jsonb)', 'EXECUTE')",
        )
        is False
    )
    conn.close()
