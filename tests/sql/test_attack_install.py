"""Attacks on the install: a non-superuser who owns, or may create, pgGit core objects in schema
pggit decides what code the module's SECURITY DEFINER functions run, as the superuser who
installed them. Each test makes the attacker a real LOGIN role, does what that role can do before
or after the install, and lets a real worker or operator call the module; the install must refuse
(both installers, every time) and the attacker must never become superuser. Against 0.1.0 (and
main before 011) the install went through and the attacker became superuser.
"""

from __future__ import annotations

import secrets
import subprocess

import psycopg2
import pytest
from psycopg2 import sql

from helpers.db import scalar
from pggit_supervisor import schema

ROOT = schema.schema_dir()


@pytest.fixture
def attacker_db(empty_db):
    """(superuser connection to a fresh database, its dsn, make_role): roles made with make_role
    log in to that database; they and what they own there are gone afterwards."""
    conn = psycopg2.connect(empty_db)
    conn.autocommit = True
    created: list[str] = []

    def make_role(*options: str) -> str:
        name = f"pggit_inst_{secrets.token_hex(5)}"
        conn.cursor().execute(sql.SQL("CREATE ROLE {} LOGIN " + " ".join(options)).format(sql.Identifier(name)))
        created.append(name)
        return name

    yield conn, empty_db, make_role
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(sql.Identifier(conn.info.dbname)))
        for name in created:
            cur.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
    conn.close()


def as_role(dsn: str, role: str, statements: str) -> None:
    conn = psycopg2.connect(dsn, user=role)
    conn.autocommit = True
    try:
        conn.cursor().execute(statements)
    finally:
        conn.close()


def install(dsn: str) -> str | None:
    """None when `schema install` went through, else its error."""
    try:
        schema.install(dsn, log=lambda *_: None)
    except schema.SchemaError as exc:
        return str(exc)
    return None


def psql_install(dsn: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(ROOT / "install.sql")],
        capture_output=True,
        text=True,
    )


def is_superuser(conn, role: str) -> bool:
    return scalar(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))


def nothing_installed(conn) -> bool:
    return scalar(conn, "SELECT to_regclass('pggit.backup_schema_migrations') IS NULL")


def test_database_owner_who_made_schema_pggit_first_cannot_become_superuser_through_a_workers_claim(attacker_db):
    conn, dsn, make_role = attacker_db
    owner = make_role()
    conn.cursor().execute(
        sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(conn.info.dbname), sql.Identifier(owner))
    )
    as_role(dsn, owner, "CREATE SCHEMA pggit")

    refusal = install(dsn)
    if refusal is None:
        # what 0.1.0 allowed: the schema's owner replaces a helper the queue functions call by name
        as_role(
            dsn,
            owner,
            f"""
            DROP FUNCTION pggit._require_worker_id(text);
            CREATE FUNCTION pggit._require_worker_id(p text) RETURNS text LANGUAGE plpgsql AS $$
            BEGIN
                IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                    EXECUTE 'ALTER ROLE {owner} SUPERUSER';
                END IF;
                RETURN p;
            END $$;
            GRANT EXECUTE ON FUNCTION pggit._require_worker_id(text) TO PUBLIC;""",
        )
        worker = make_role("IN ROLE pggit_backup_worker")
        scalar(conn, "SELECT pggit.backup_pg_dump('main')")
        as_role(dsn, worker, "SELECT * FROM pggit.claim_backup_job('host-a', NULL, 60)")
    assert not is_superuser(conn, owner), "the schema's owner became superuser through a worker's claim"
    assert refusal is not None and "schema pggit is owned by " + owner in refusal
    assert "ALTER SCHEMA pggit OWNER TO" in refusal
    assert nothing_installed(conn), "a refused install writes nothing"


def test_owner_of_pggit_branches_cannot_become_superuser_through_a_cast_in_backup_pgbackrest(attacker_db):
    conn, dsn, make_role = attacker_db
    core = make_role()
    conn.cursor().execute(
        sql.SQL("""
        CREATE SCHEMA pggit;
        CREATE TABLE pggit.branches (id serial PRIMARY KEY, name text UNIQUE NOT NULL, head_commit_hash text);
        CREATE TABLE pggit.commits (id serial PRIMARY KEY, hash text UNIQUE NOT NULL, branch_id int, message text);
        ALTER TABLE pggit.branches OWNER TO {core};
        GRANT USAGE ON SCHEMA pggit TO {core};
        CREATE SCHEMA core_private AUTHORIZATION {core};""").format(core=sql.Identifier(core))
    )

    refusal = install(dsn)
    if refusal is None:
        # what 0.1.0 allowed: a column type whose assignment cast to text promotes its owner
        as_role(
            dsn,
            core,
            f"""
            CREATE TYPE core_private.h AS (v text);
            CREATE FUNCTION core_private.h_to_text(x core_private.h) RETURNS text LANGUAGE plpgsql AS $$
            BEGIN
                IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                    EXECUTE 'ALTER ROLE {core} SUPERUSER';
                END IF;
                RETURN x.v;
            END $$;
            CREATE CAST (core_private.h AS text) WITH FUNCTION core_private.h_to_text(core_private.h) AS ASSIGNMENT;
            GRANT USAGE ON SCHEMA core_private TO PUBLIC;
            ALTER TABLE pggit.branches ALTER COLUMN head_commit_hash TYPE core_private.h
                USING ROW(head_commit_hash)::core_private.h;""",
        )
        operator = make_role("IN ROLE pggit_backup_operator")
        as_role(dsn, operator, "SELECT pggit.backup_pgbackrest('full', 'main', 'main')")
    assert not is_superuser(conn, core), "the owner of pggit.branches became superuser through backup_pgbackrest()"
    assert refusal is not None and f"table pggit.branches is owned by {core}" in refusal
    assert "ALTER TABLE pggit.branches OWNER TO" in refusal
    assert nothing_installed(conn)


def test_handing_a_core_table_to_a_non_superuser_after_the_install_makes_every_later_install_refuse(attacker_db):
    conn, dsn, make_role = attacker_db
    assert install(dsn) is None
    core = make_role()
    conn.cursor().execute(sql.SQL("ALTER TABLE pggit.commits OWNER TO {}").format(sql.Identifier(core)))
    migrations = scalar(conn, "SELECT count(*) FROM pggit.backup_schema_migrations")

    refusal = install(dsn)
    assert refusal is not None and f"table pggit.commits is owned by {core}" in refusal
    by_psql = psql_install(dsn)
    assert by_psql.returncode != 0 and f"table pggit.commits is owned by {core}" in by_psql.stderr
    assert scalar(conn, "SELECT count(*) FROM pggit.backup_schema_migrations") == migrations


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("GRANT CREATE ON SCHEMA pggit TO {role}", "role {role} may CREATE in schema pggit"),
        ("GRANT CREATE ON SCHEMA pggit TO PUBLIC", "PUBLIC may CREATE in schema pggit"),
        ("GRANT TRIGGER ON pggit.commits TO {role}", "role {role} holds TRIGGER on pggit.commits"),
        (
            """CREATE SCHEMA s_{role} AUTHORIZATION {role};
        SET ROLE {role};
        CREATE TYPE s_{role}.h AS (v text);
        RESET ROLE;
        ALTER TABLE pggit.branches ADD COLUMN extra s_{role}.h""",
            "type s_{role}.h, owned by {role}",
        ),
        (
            """CREATE SCHEMA s_{role} AUTHORIZATION {role};
        SET ROLE {role};
        CREATE FUNCTION s_{role}.f() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
        RESET ROLE;
        CREATE TRIGGER t BEFORE INSERT ON pggit.commits FOR EACH ROW EXECUTE FUNCTION s_{role}.f()""",
            "function s_{role}.f(), owned by {role}",
        ),
        (
            """CREATE SCHEMA s_{role} AUTHORIZATION {role};
        SET ROLE {role};
        CREATE FUNCTION s_{role}.d() RETURNS text LANGUAGE sql AS 'SELECT ''x''';
        RESET ROLE;
        ALTER TABLE pggit.commits ALTER COLUMN message SET DEFAULT s_{role}.d()""",
            "function s_{role}.d(), owned by {role}",
        ),
        (
            """CREATE SCHEMA s_{role} AUTHORIZATION {role};
        SET ROLE {role};
        CREATE FUNCTION s_{role}.p(text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
        RESET ROLE;
        ALTER TABLE pggit.commits ENABLE ROW LEVEL SECURITY;
        CREATE POLICY p ON pggit.commits USING (s_{role}.p(hash))""",
            "function s_{role}.p(text), owned by {role}",
        ),
        (
            """CREATE SCHEMA s_{role} AUTHORIZATION {role};
        SET ROLE {role};
        CREATE FUNCTION s_{role}.c(text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
        RESET ROLE;
        ALTER TABLE pggit.commits ADD CONSTRAINT c CHECK (s_{role}.c(hash))""",
            "function s_{role}.c(text), owned by {role}",
        ),
        (
            """CREATE SCHEMA s_{role} AUTHORIZATION {role};
        SET ROLE {role};
        CREATE FUNCTION s_{role}.lower(varchar) RETURNS text LANGUAGE sql AS 'SELECT ''x''';
        RESET ROLE;
        ALTER FUNCTION s_{role}.lower(varchar) SET SCHEMA pggit""",
            "function pggit.lower(character varying) is owned by {role}",
        ),
        (
            "CREATE TABLE public.child_{role} () INHERITS (pggit.commits);"
            " ALTER TABLE public.child_{role} OWNER TO {role}",
            "table child_{role} inherits from pggit.commits and is owned by {role}",
        ),
    ],
)
def test_a_pre_existing_pggit_that_would_run_a_non_superusers_code_is_refused_by_both_installers(
    attacker_db, setup, expected
):
    conn, dsn, make_role = attacker_db
    role = make_role()
    conn.cursor().execute("""
        CREATE SCHEMA pggit;
        CREATE TABLE pggit.branches (id serial PRIMARY KEY, name text UNIQUE NOT NULL, head_commit_hash text);
        CREATE TABLE pggit.commits (id serial PRIMARY KEY, hash text UNIQUE NOT NULL, branch_id int, message text);""")
    conn.cursor().execute(setup.format(role=role))
    expected = expected.format(role=role)

    refusal = install(dsn)
    assert refusal is not None and expected in refusal
    by_psql = psql_install(dsn)
    assert by_psql.returncode != 0 and expected in by_psql.stderr
    assert nothing_installed(conn)


def test_a_non_superuser_cannot_install_the_schema(attacker_db):
    conn, dsn, make_role = attacker_db
    role = make_role("CREATEROLE")
    conn.cursor().execute(
        sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(conn.info.dbname), sql.Identifier(role))
    )
    conn_dsn = dsn + f" user={role}"
    refusal = install(conn_dsn)
    assert refusal is not None and f"must be installed by a superuser, not by {role}" in refusal
    assert nothing_installed(conn)


def test_a_real_pggit_owned_by_a_superuser_installs_and_a_second_install_changes_nothing(attacker_db):
    conn, dsn, _ = attacker_db
    conn.cursor().execute("""
        CREATE SCHEMA pggit;
        CREATE TABLE pggit.branches (id serial PRIMARY KEY, name text UNIQUE NOT NULL, head_commit_hash text);
        CREATE TABLE pggit.commits (id serial PRIMARY KEY, hash text UNIQUE NOT NULL, branch_id int, message text,
                                    created_at timestamptz DEFAULT now());
        CREATE FUNCTION pggit.touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
        CREATE TRIGGER touch BEFORE INSERT ON pggit.commits FOR EACH ROW EXECUTE FUNCTION pggit.touch();""")
    assert install(dsn) is None
    assert install(dsn) is None
    assert psql_install(dsn).returncode == 0
    assert scalar(conn, "SELECT pggit.backup_pg_dump('main') IS NOT NULL")
