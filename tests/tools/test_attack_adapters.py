"""Attacks on what the tool adapters run and trust, each performed the way an attacker would:
real roles and logins, a real supervisor, real pg_dump runs, and job rows forged by the table
owner (what the queue's functions would have refused). Each attack succeeded against 0.1.0;
the BYPASSRLS dump, the symlink planted before the check and pass_credentials: true are guards
of what must keep working (or was already refused)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from helpers.db import query, scalar
from helpers.service import Service, wait_for_state
from pggit_supervisor.config import default_tool
from pggit_supervisor.errors import JobError
from pggit_supervisor.files import allowed_output_dir, make_scratch_dir, prepare_output_dir, sha256_of
from pggit_supervisor.tools.pg_dump import open_snapshot

ENDED = {"completed", "will_retry", "permanently_failed"}


@pytest.fixture
def roles(db):
    """roles(*grants, attributes='') -> name of a new LOGIN role; all dropped afterwards."""
    created: list[str] = []

    def make(*grants: str, attributes: str = "") -> str:
        name = f"pggit_atk_{secrets.token_hex(5)}"
        with db.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN " + attributes).format(sql.Identifier(name)))
            created.append(name)
            for granted in grants:
                cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(name)))
        return name

    yield make
    with db.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)", (created,))
        for name in created:
            cur.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(name)))
            cur.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def service(make_service):
    def start(dsn: str, tools: dict) -> Service:
        return make_service(dsn, workers=1, tools=tools).start()

    return start


def _as(dsn: str, login: str) -> str:
    return psycopg2.extensions.make_dsn(dsn, user=login)


def _job_of(db, backup_id) -> str:
    return str(scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))


def _hostile_rls_table(db, attacker: str, secret: str) -> None:
    """The attacker owns a schema with a table whose RLS policy calls the attacker's function.
    Run by anyone else, the function reads what that login can read (a secret table the
    attacker has no access to) and carries it out in its error, into the job's last_error,
    which every pggit_backup_reader can select."""
    db.cursor().execute(
        sql.SQL("""
        CREATE SCHEMA vault; CREATE TABLE vault.keys (k text); INSERT INTO vault.keys VALUES ({secret});
        CREATE SCHEMA sneaky AUTHORIZATION {attacker};
        SET ROLE {attacker};
        CREATE TABLE sneaky.orders (id int); INSERT INTO sneaky.orders VALUES (1), (2);
        CREATE FUNCTION sneaky.peek() RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            IF current_user <> {attacker_text} THEN
                RAISE EXCEPTION 'policy ran as %: %', current_user, (SELECT string_agg(k, ',') FROM vault.keys);
            END IF;
            RETURN true;
        END $$;
        ALTER TABLE sneaky.orders ENABLE ROW LEVEL SECURITY;
        CREATE POLICY everyone ON sneaky.orders USING (sneaky.peek());
        GRANT USAGE ON SCHEMA sneaky TO PUBLIC; GRANT SELECT ON sneaky.orders TO PUBLIC;
        RESET ROLE;
        CREATE TABLE public.plain AS SELECT g AS id FROM generate_series(1, 3) g;
    """).format(secret=sql.Literal(secret), attacker=sql.Identifier(attacker), attacker_text=sql.Literal(attacker))
    )


def test_rls_policy_function_never_runs_as_the_worker_login_during_a_pg_dump_backup(
    db, dsn, roles, service, backup_dir
):
    secret = f"key-{secrets.token_hex(8)}"
    attacker = roles()
    worker = roles("pggit_backup_worker", "pg_read_all_data")
    _hostile_rls_table(db, attacker, secret)
    db.cursor().execute(sql.SQL("GRANT SELECT ON vault.keys TO {}").format(sql.Identifier(worker)))
    service(_as(dsn, worker), {"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}})

    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir),))
    row = wait_for_state(db, _job_of(db, backup_id), ENDED, timeout=60)
    errors = " ".join(str(value) for value in query(db, "SELECT last_error, output FROM pggit.backup_jobs")[0].values())
    assert "policy ran as" not in errors and secret not in errors, "the attacker's policy function ran as the worker"
    # pg_dump itself refuses a table whose policies would apply: the operator is told what to grant
    assert row["job_state"] == "permanently_failed", row
    assert "row-level security" in row["last_error"] and "BYPASSRLS" in row["last_error"]


def test_rls_table_is_recorded_as_not_counted_while_every_other_table_is_counted(db, dsn, roles):
    attacker = roles()
    worker = roles("pggit_backup_worker", "pg_read_all_data")
    _hostile_rls_table(db, attacker, "unused")
    snapshot = open_snapshot(_as(dsn, worker), db.info.dbname, None)
    try:
        facts = snapshot.facts()
    finally:
        snapshot.close()
    assert facts["row_counts"]["public.plain"] == 3
    assert "sneaky.orders" not in facts["row_counts"]
    assert "row-level security" in facts["row_counts_uncounted"]["sneaky.orders"]


def test_rls_table_of_another_owner_is_dumped_and_counted_by_a_bypassrls_login_without_running_its_policy(
    db, dsn, roles, service, backup_dir
):
    secret = f"key-{secrets.token_hex(8)}"
    attacker = roles()
    worker = roles("pggit_backup_worker", "pg_read_all_data", attributes="BYPASSRLS")
    _hostile_rls_table(db, attacker, secret)
    service(_as(dsn, worker), {"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}})
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir),))
    wait_for_state(db, _job_of(db, backup_id), "completed", timeout=60)
    metadata = scalar(db, "SELECT metadata FROM pggit.backups WHERE backup_id = %s", (backup_id,))
    assert metadata["row_counts"]["sneaky.orders"] == 2 and "row_counts_uncounted" not in metadata


def test_operator_planted_in_public_never_runs_as_the_service_login_while_rows_are_counted(
    db, dsn, roles, service, backup_dir
):
    """A user who may create objects in public (every user before PostgreSQL 15) defines
    !~~ (NOT LIKE) for name, name: with the default search_path it is a better match than
    pg_catalog's !~~ (name, text), so any unqualified NOT LIKE on a name column calls it, as
    the service's login (the shipped config's superuser)."""
    attacker = roles()
    db.cursor().execute(
        sql.SQL("""
        GRANT CREATE ON SCHEMA public TO {attacker};
        SET ROLE {attacker};
        CREATE FUNCTION public.sly(name, name) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            IF current_user <> {attacker_text} THEN
                RAISE EXCEPTION 'operator ran as %', current_user;
            END IF;
            RETURN $1::text NOT LIKE $2::text;
        END $$;
        CREATE OPERATOR public.!~~ (LEFTARG = name, RIGHTARG = name, FUNCTION = public.sly);
        RESET ROLE;
    """).format(attacker=sql.Identifier(attacker), attacker_text=sql.Literal(attacker))
    )
    service(dsn, {"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}})
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir),))
    row = wait_for_state(db, _job_of(db, backup_id), ENDED, timeout=60)
    assert "operator ran as" not in str(row["last_error"]), "the attacker's operator ran as the service's login"
    assert row["job_state"] == "completed", row


def test_crafted_commit_hash_cannot_place_the_dump_outside_the_output_directory(db, dsn, service, backup_dir):
    inner = backup_dir / "dumps"
    hostile = "/../../.x"
    db.cursor().execute(
        """INSERT INTO pggit.commits (hash, message) VALUES (%s, 'hostile');
                           INSERT INTO pggit.branches (name, head_commit_hash) VALUES ('evil', %s)""",
        (hostile, hostile),
    )
    service(dsn, {"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}})
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('evil', NULL, 'custom', %s)", (str(inner),))
    wait_for_state(db, _job_of(db, backup_id), "completed", timeout=60)
    location = scalar(db, "SELECT location FROM pggit.backups WHERE backup_id = %s", (backup_id,))
    path = location.removeprefix("file://")
    assert os.path.dirname(path) == str(inner) and os.path.isfile(path)
    assert "/" not in os.path.basename(path) and ".." not in Path(path).parts
    assert sorted(os.listdir(backup_dir)) == ["dumps"], "nothing landed beside the output directory"


def _root_owned_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture
def outside():
    """A root-owned directory outside every allowed root: it stands for /etc."""
    path = _root_owned_dir("pggit-atk-outside-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_symlink_swapped_into_the_output_path_after_the_check_creates_and_chowns_nothing_outside(backup_dir, outside):
    tool = replace(default_tool("pg_dump"), run_as="postgres", allowed_output_dirs=(str(backup_dir),))
    (backup_dir / "nightly").mkdir()
    shutil.chown(backup_dir / "nightly", "postgres", "postgres")
    checked = allowed_output_dir(str(backup_dir / "nightly" / "db1"), tool)
    # the tool's user owns backup_dir/nightly: between the check and the use it swaps it
    os.rename(backup_dir / "nightly", backup_dir / "nightly.old")
    os.symlink(outside, backup_dir / "nightly")
    with pytest.raises(JobError, match="not a directory"):
        prepare_output_dir(checked, tool)
    assert os.listdir(outside) == [], "a directory was created outside the allowed root"
    assert os.stat(outside).st_uid == 0, "the outside directory was given away"


def test_symlink_swapped_under_a_scratch_directory_parent_creates_nothing_outside(backup_dir, outside):
    (backup_dir / "out").mkdir()
    parent = str(backup_dir / "out")
    os.rename(parent, parent + ".old")
    os.symlink(outside, parent)
    with pytest.raises(JobError):
        make_scratch_dir(parent, ".verify-", "postgres")
    assert os.listdir(outside) == []


def test_symlink_planted_in_the_output_path_before_the_job_runs_is_refused(db, dsn, service, backup_dir, outside):
    os.symlink(outside, backup_dir / "planted")
    service(dsn, {"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}})
    backup_id = scalar(
        db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir / "planted" / "x"),)
    )
    row = wait_for_state(db, _job_of(db, backup_id), ENDED, timeout=60)
    assert row["job_state"] == "permanently_failed" and "allowed_output_dirs" in row["last_error"]
    assert os.listdir(outside) == []


def test_symlink_planted_in_a_finished_directory_dump_is_never_read_as_root(backup_dir, outside):
    """The tool's user owns what it wrote: a link to a file only root may read, put into the
    dump before root hashes it, must not be read (its digest and size would be recorded)."""
    secret = outside / "shadow"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    dump = backup_dir / ".pggit-job.partial"
    dump.mkdir()
    (dump / "toc.dat").write_bytes(b"toc")
    os.symlink(secret, dump / "3001.dat")
    with pytest.raises(OSError, match="3001.dat"):
        sha256_of(str(dump))


@pytest.fixture
def env_dumper(tmp_path):
    """An allowlisted custom command that writes its whole environment to the file it is given."""
    script = tmp_path / "env-dump"
    script.write_text('#!/bin/sh\nenv > "$1"\n')
    script.chmod(0o755)
    return script


def _run_custom(db, tmp_path, script: Path, tag: str) -> dict[str, str]:
    out = tmp_path / f"env-{tag}"
    backup_id = scalar(
        db,
        "SELECT pggit.register_backup(%s, 'full', 'custom', %s, p_branch_name := 'main')",
        (f"env-{tag}", str(tmp_path)),
    )
    job_id = scalar(db, "SELECT pggit.enqueue_backup_job(%s, %s, 'custom')", (backup_id, f"{script} {out}"))
    wait_for_state(db, str(job_id), "completed", timeout=30)
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def _dsn_with_credentials(dsn: str, tmp_path: Path) -> str:
    return psycopg2.extensions.make_dsn(dsn, password="s3cret-of-the-service", passfile=str(tmp_path / "pgpass"))


def test_custom_command_does_not_receive_the_services_database_password(db, dsn, service, tmp_path, env_dumper):
    service(_dsn_with_credentials(dsn, tmp_path), {"custom": {"allowed_commands": [str(env_dumper)]}})
    env = _run_custom(db, tmp_path, env_dumper, "plain")
    assert "PGPASSWORD" not in env and "PGPASSFILE" not in env
    assert "s3cret-of-the-service" not in json.dumps(env)
    assert env["PGDATABASE"] == db.info.dbname and env["PGHOST"], "where to connect is still given"


def test_custom_command_whose_entry_says_pass_credentials_receives_them(db, dsn, service, tmp_path, env_dumper):
    service(
        _dsn_with_credentials(dsn, tmp_path),
        {"custom": {"allowed_commands": [{"path": str(env_dumper), "pass_credentials": True}]}},
    )
    env = _run_custom(db, tmp_path, env_dumper, "trusted")
    assert env["PGPASSWORD"] == "s3cret-of-the-service" and env["PGPASSFILE"] == str(tmp_path / "pgpass")


def _forge_job(db, tool: str, spec: dict) -> str:
    """A job row written by the table owner, as no queue function would have written it."""
    backup_id = scalar(
        db,
        "SELECT pggit.register_backup(%s, 'full', %s, 'file:///forged/', p_branch_name := 'main')",
        (f"forged-{secrets.token_hex(4)}", tool),
    )
    return str(
        scalar(
            db,
            """INSERT INTO pggit.backup_jobs (backup_id, tool, command, spec, max_attempts)
                             VALUES (%s, %s, 'forged', %s::jsonb, 3) RETURNING job_id""",
            (backup_id, tool, json.dumps(spec)),
        )
    )


FORGED = [
    pytest.param("pg_basebackup", {"format": "../tar"}, "parameter format", id="basebackup-format"),
    pytest.param("pg_basebackup", {"checkpoint": "now"}, "parameter checkpoint", id="basebackup-checkpoint"),
    pytest.param(
        "pg_basebackup",
        {"format": "tar", "compression": "gzip --no-sync"},
        "parameter compression",
        id="basebackup-compression",
    ),
    pytest.param(
        "pg_basebackup",
        {"format": "tar", "compression": "gzip", "compression_level": "five"},
        "parameter compression_level",
        id="basebackup-level-not-an-integer",
    ),
    pytest.param(
        "pg_basebackup",
        {"format": "tar", "compression": "gzip", "compression_level": 99},
        "parameter compression_level",
        id="basebackup-level-out-of-range",
    ),
    pytest.param(
        "pg_dump",
        {"format": "custom", "compression_level": "9x"},
        "parameter compression_level",
        id="pg_dump-level-not-an-integer",
    ),
    pytest.param("pg_dump", {"format": "directory", "jobs": "2 --no-sync"}, "parameter jobs", id="pg_dump-jobs"),
    pytest.param(
        "pg_dump", {"format": "custom", "schema": 'x" --exclude-schema="*'}, "parameter schema", id="pg_dump-schema"
    ),
]


@pytest.mark.parametrize("tool,params,named", FORGED)
def test_forged_job_parameter_fails_the_job_permanently_naming_the_parameter(
    db, dsn, service, backup_dir, tool, params, named
):
    service(dsn, {tool: {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}})
    job_id = _forge_job(db, tool, {"tool": tool, "params": {"output_dir": str(backup_dir), **params}})
    row = wait_for_state(db, job_id, ENDED, timeout=30)
    assert row["job_state"] == "permanently_failed", row
    assert named in row["last_error"] and "allowed" in row["last_error"]
    assert os.listdir(backup_dir) == [], "nothing was written"


def test_forged_timeout_that_is_not_an_integer_fails_the_job_permanently(db, dsn, service, backup_dir):
    service(dsn, {"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}})
    job_id = _forge_job(
        db,
        "pg_dump",
        {"tool": "pg_dump", "timeout_seconds": "soon", "params": {"output_dir": str(backup_dir), "format": "custom"}},
    )
    row = wait_for_state(db, job_id, ENDED, timeout=30)
    assert row["job_state"] == "permanently_failed" and "timeout_seconds" in row["last_error"], row
    assert "allowed" in row["last_error"]
