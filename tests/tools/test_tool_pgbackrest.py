"""pgBackRest end to end: a cluster of the test's own archiving into a stanza, backups scheduled
with the guide's call and run by a real supervisor as the postgres OS user, verified, recorded,
restored into a second cluster and compared; the stanza lock, a damaged repository and an unknown
stanza; and the adapter's readings of pgBackRest's exit codes and reports."""

import fcntl
import gzip
import json
import os
import pwd
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg2
import pytest

from helpers.cluster import BIN, Cluster, as_postgres, free_port
from helpers.db import query, scalar
from helpers.links import IdleLink
from helpers.processes import wait_until
from helpers.service import Service
from helpers.stanza import PGBACKREST, stanza_cluster
from pggit_supervisor.archive_check import ArchiveChecks
from pggit_supervisor.config import Config, Tools, default_tool, load_config
from pggit_supervisor.errors import JobError
from pggit_supervisor.expiry import apply_retention
from pggit_supervisor.queue import Queue
from pggit_supervisor.retention import Retention
from pggit_supervisor.runner import CapturedOutput, RunResult
from pggit_supervisor.tools.pgbackrest import explain_exit, judge_verify, new_label, parse_location, restore_argv

TABLE_DIGEST = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM public.orders t"
FINAL = {"completed", "will_retry", "permanently_failed", "cancelled"}
FULL_LABEL = re.compile(r"^\d{8}-\d{6}F$")
INCR_LABEL = re.compile(r"^\d{8}-\d{6}F_\d{8}-\d{6}I$")


@dataclass
class Demo:
    cluster: Cluster
    conf: Path
    conn: object

    def pgbackrest(self, *args: str) -> subprocess.CompletedProcess:
        return as_postgres([PGBACKREST, f"--config={self.conf}", "--stanza=demo", *args])


@pytest.fixture(scope="module")
def demo():
    """A cluster archiving into stanza `demo` of two repositories in its own directory (repo2
    is only for the test that needs an empty one), with the schema installed and a table to
    compare after a restore. Always removed, processes too (helpers/stanza.py)."""
    with stanza_cluster("demo", {1: 2, 2: 1}) as stanza:
        conn = psycopg2.connect(stanza.cluster.dsn)
        conn.autocommit = True
        try:
            conn.cursor().execute("""CREATE TABLE public.orders (id int PRIMARY KEY, customer text, amount numeric);
                                     INSERT INTO public.orders SELECT g, 'customer ' || g % 17, g * 1.25
                                       FROM generate_series(1, 2000) g""")
            yield Demo(stanza.cluster, stanza.conf, conn)
        finally:
            conn.close()


@pytest.fixture
def start_service(tmp_path, demo):
    """A real supervisor with the pgbackrest tool section, as the guide's operator would write it."""
    started = []

    def start(**settings) -> Service:
        settings.setdefault(
            "tools",
            {"pgbackrest": {"path": PGBACKREST, "run_as": "postgres", "config": str(demo.conf), "timeout": 600}},
        )
        service = Service(tmp_path, demo.cluster.dsn, **settings).start()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.proc.poll() is None:
            service.stop()
        service.cleanup()


def schedule(conn, kind: str, stanza: str = "demo") -> tuple[str, str]:
    """The guide's call; returns (backup_id, job_id)."""
    backup_id = scalar(conn, "SELECT pggit.backup_pgbackrest(%s, 'main', %s)", (kind, stanza))
    return str(backup_id), str(scalar(conn, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))


def finished(conn, job_id: str, timeout: float = 90, states: set[str] = FINAL) -> dict:
    return wait_until(
        lambda: (row := job(conn, job_id))["job_state"] in states and row,
        timeout,
        f"job {job_id} to finish (now {job(conn, job_id)['job_state']})",
        interval=0.2,
    )


def job(conn, job_id: str) -> dict:
    return query(conn, "SELECT * FROM pggit.backup_job_queue WHERE job_id = %s", (job_id,))[0]


def backup(conn, backup_id: str) -> dict:
    return query(conn, "SELECT * FROM pggit.backups WHERE backup_id = %s", (backup_id,))[0]


def completed_backup(conn, backup_id: str, job_id: str, label: re.Pattern, retried: bool = False) -> dict:
    state = finished(conn, job_id, states={"completed", "permanently_failed"} if retried else FINAL)
    assert state["job_state"] == "completed", state["last_error"]
    row = backup(conn, backup_id)
    assert row["status"] == "completed"
    stanza_label = row["location"].removeprefix("pgbackrest://demo/")
    assert label.match(stanza_label), row["location"]
    assert row["metadata"]["label"] == stanza_label
    return row


@pytest.mark.slow
def test_full_then_incremental_backup_complete_verified_with_label_sizes_lsn_and_wal(demo, start_service):
    start_service()
    full_id, full_job = schedule(demo.conn, "full")
    full = completed_backup(demo.conn, full_id, full_job, FULL_LABEL)
    meta = full["metadata"]
    assert full["backup_size"] > 0 and 0 < full["compressed_size"] < full["backup_size"]
    assert full["compression_type"] == "gzip" and meta["compress_type"] == "gz"
    assert re.fullmatch(r"pgbackrest-manifest-sha1:[0-9a-f]{40}", full["checksum"])
    assert meta["type"] == meta["requested_type"] == "full"
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", meta["lsn_start"]) and meta["lsn_stop"]
    assert re.fullmatch(r"[0-9A-F]{24}", meta["wal_start"]) and meta["wal_stop"] >= meta["wal_start"]
    assert meta["timestamp_start"] <= meta["timestamp_stop"] and meta["backrest_version"] == "2.45"
    assert meta["repo"] == 1 and meta["verified"] is True and full["verified_at"] is not None
    assert meta["verification"]["backup_status"] == "valid" and meta["verification"]["scope"] == "whole stanza"

    demo.conn.cursor().execute("INSERT INTO public.orders SELECT g, 'late', 1 FROM generate_series(2001, 2100) g")
    incr_id, incr_job = schedule(demo.conn, "incr")
    incr = completed_backup(demo.conn, incr_id, incr_job, INCR_LABEL)
    meta = incr["metadata"]
    assert meta["type"] == "incr" and meta["prior"] == full["metadata"]["label"]
    assert full["metadata"]["label"] in meta["reference"]
    assert meta["repository_backup_size"] < full["compressed_size"], "an incremental stores only what changed"
    assert incr["verified_at"] is not None and incr["location"].startswith(f"pgbackrest://demo/{meta['prior']}_")


@pytest.mark.slow
def test_incremental_without_a_prior_full_is_recorded_as_the_full_pgbackrest_made(demo, start_service):
    start_service()
    backup_id = scalar(demo.conn, """SELECT pggit.backup_pgbackrest('incr', 'main', 'demo', '{"repo": 2}')""")
    job_id = str(scalar(demo.conn, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))
    row = completed_backup(demo.conn, str(backup_id), job_id, FULL_LABEL)
    meta = row["metadata"]
    assert (meta["requested_type"], meta["type"], meta["repo"]) == ("incr", "full", 2)
    assert row["backup_type"] == "full", "the row records the kind of backup that was made"
    assert any("incr backup has been changed to full" in line for line in meta["warnings"])
    assert "incr requested; pgBackRest made a full" in scalar(
        demo.conn, "SELECT output FROM pggit.backup_jobs WHERE job_id = %s", (job_id,)
    )
    assert (demo.cluster.dir / "repo2" / "backup" / "demo" / meta["label"]).is_dir()


@pytest.mark.slow
def test_backup_restored_with_restore_argv_starts_and_holds_the_same_orders(demo, start_service, tmp_path):
    service = start_service()
    demo.conn.cursor().execute("UPDATE public.orders SET amount = amount + 1 WHERE id % 7 = 0")
    backup_id, job_id = schedule(demo.conn, "full")
    row = completed_backup(demo.conn, backup_id, job_id, FULL_LABEL)
    expected = query(demo.conn, TABLE_DIGEST)[0]

    tool = load_config(str(service.config_path)).tools["pgbackrest"]  # what the restore CLI reads
    target = demo.cluster.dir / "restored"
    as_postgres(["mkdir", "-m", "700", str(target)])
    port = free_port()
    try:
        as_postgres(restore_argv(tool, row["location"], str(target)))
        with open(target / "postgresql.auto.conf", "a") as auto:
            auto.write(f"port = {port}\nunix_socket_directories = '{demo.cluster.socket_dir}'\n")
        as_postgres(
            [str(BIN / "pg_ctl"), "-D", str(target), "-l", str(demo.cluster.dir / "restored.log"), "-w", "start"]
        )
        restored = psycopg2.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres")
        restored.autocommit = True
        try:
            wait_until(lambda: not scalar(restored, "SELECT pg_is_in_recovery()"), 60, "the restored copy to promote")
            assert query(restored, TABLE_DIGEST)[0] == expected
            assert scalar(restored, "SHOW archive_mode") == "off", "the copy must not archive into the source's stanza"
        finally:
            restored.close()
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D", str(target), "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(target, ignore_errors=True)
    assert not target.exists()


@pytest.mark.slow
def test_two_backups_of_one_stanza_queued_together_never_run_at_once(demo, start_service):
    start_service(workers=2)
    ids = query(
        demo.conn,
        "SELECT pggit.backup_pgbackrest('full', 'main', 'demo') AS a, "
        "pggit.backup_pgbackrest('full', 'main', 'demo') AS b",
    )[0]
    jobs = [
        str(scalar(demo.conn, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (b,))) for b in ids.values()
    ]
    most_running = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = [
            row["job_state"]
            for row in query(
                demo.conn, "SELECT job_state FROM pggit.backup_job_queue WHERE job_id = ANY(%s::uuid[])", (jobs,)
            )
        ]
        most_running = max(most_running, states.count("in_progress"))
        if all(state in FINAL for state in states):
            break
        time.sleep(0.02)
    assert most_running == 1
    rows = query(
        demo.conn,
        "SELECT j.status, j.started_at, j.completed_at, b.location FROM pggit.backup_jobs j "
        "JOIN pggit.backups b USING (backup_id) WHERE j.job_id = ANY(%s::uuid[]) "
        "ORDER BY j.started_at",
        (jobs,),
    )
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert rows[1]["started_at"] >= rows[0]["completed_at"], "the second started only after the first ended"
    assert rows[0]["location"] != rows[1]["location"]


@pytest.mark.slow
def test_backup_meeting_another_processs_stanza_lock_will_retry_then_completes(demo, start_service):
    start_service(retry={"base_delay": 1, "max_delay": 2})
    lock_file = demo.cluster.dir / "lock" / "demo-backup.lock"
    as_postgres(["mkdir", "-p", str(lock_file.parent)])
    # the flock pgBackRest itself takes: held here as another pgBackRest process would hold it
    holder = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        entry = pwd.getpwnam("postgres")
        os.fchown(holder, entry.pw_uid, entry.pw_gid)
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        backup_id, job_id = schedule(demo.conn, "full")
        row = finished(demo.conn, job_id)
        assert row["job_state"] == "will_retry", row["last_error"]
        assert "another pgBackRest process holds the stanza lock" in row["last_error"]
        assert "LockAcquireError" in row["last_error"] and "exit 50" in row["last_error"]
    finally:
        os.close(holder)
    completed_backup(demo.conn, backup_id, job_id, FULL_LABEL, retried=True)
    assert job(demo.conn, job_id)["attempts"] == 2


@pytest.mark.slow
def test_damaged_referenced_full_fails_the_incremental_verification_retryably(demo, start_service):
    start_service(retry={"base_delay": 3, "max_delay": 3})
    demo.pgbackrest("--type=full", "backup")
    info = demo.pgbackrest("--output=json", "info").stdout
    full = re.findall(r'"label":"(\d{8}-\d{6}F)"', info)[-1]
    damaged = demo.cluster.dir / "repo" / "backup" / "demo" / full / "pg_data" / "PG_VERSION.gz"
    original = damaged.read_bytes()
    try:
        damaged.write_bytes(gzip.compress(b"99\n"))  # a valid file, the wrong content
        backup_id, job_id = schedule(demo.conn, "incr")
        row = finished(demo.conn, job_id)
        assert row["job_state"] == "will_retry", row["last_error"]
        assert row["last_error"].startswith("verification failed: pgbackrest verify: ")
        assert f"backup {full} is invalid" in row["last_error"] and "checksum invalid: 1" in row["last_error"]
    finally:
        damaged.write_bytes(original)
    assert completed_backup(demo.conn, backup_id, job_id, INCR_LABEL, retried=True)["metadata"]["prior"].startswith(
        full
    )


@pytest.mark.slow
def test_unknown_stanza_fails_permanently_at_once_naming_it_and_stanza_create(demo, start_service):
    start_service()
    backup_id, job_id = schedule(demo.conn, "full", "nosuchstanza")
    row = finished(demo.conn, job_id, timeout=30)
    assert row["job_state"] == "permanently_failed" and row["attempts"] == row["max_attempts"]
    assert row["last_error"] == (
        f"invalid job: pgBackRest stanza 'nosuchstanza' does not exist in {demo.conf}: run stanza-create "
        f"(as postgres: {PGBACKREST} --config={demo.conf} --stanza=nosuchstanza stanza-create)"
    )
    assert backup(demo.conn, backup_id)["status"] == "failed"


@pytest.mark.slow
def test_retention_removes_an_expired_full_with_pgbackrest_expire_set_and_keeps_the_newest(demo, start_service):
    start_service()
    old_id, old_job = schedule(demo.conn, "full")
    old_label = completed_backup(demo.conn, old_id, old_job, FULL_LABEL)["metadata"]["label"]
    new_id, new_job = schedule(demo.conn, "full")
    new_label = completed_backup(demo.conn, new_id, new_job, FULL_LABEL)["metadata"]["label"]
    tool = replace(default_tool("pgbackrest"), path=PGBACKREST, run_as="postgres", config=str(demo.conf))
    config = Config(dsn=demo.cluster.dsn, worker_id="host-x", tools=Tools((tool,)))

    retention = Retention(target={"tool": "pgbackrest", "stanza": "demo"}, keep_last=1)
    done = apply_retention(Queue(demo.conn), config, retention)

    assert old_id in {row[0] for row in done.marked} and new_id not in {row[0] for row in done.marked}
    # earlier tests' sets that pgBackRest's own retention took already count as removed; the one
    # full of repo2 (an earlier test's) is pgBackRest's to keep: its removal fails, visibly
    failed = {each.backup_id: each.error for each in done.removals if each.error}
    assert old_id not in failed, done.render()
    for error in failed.values():
        assert "cannot be expired until another full backup has been created on this repo" in error, error
    info = json.loads(demo.pgbackrest("info", "--output=json").stdout)[0]
    labels = {each["label"] for each in info["backup"]}
    assert new_label in labels and old_label not in labels
    status = query(
        demo.conn, "SELECT removal, removed_by FROM pggit.backup_expiration_status WHERE backup_id = %s", (old_id,)
    )
    assert status == [{"removal": "removed", "removed_by": "host-x"}]
    assert backup(demo.conn, old_id)["status"] == "completed", "the row stays"


@pytest.mark.slow
def test_an_expired_full_with_a_dependant_made_by_hand_is_held_and_stays_in_the_repository(demo, start_service):
    """`expire --set` of the full would take the DBA's incremental with it, which no rule of
    ours let go (the queue never saw it): the removal is held, visibly, and retried later."""
    start_service()
    old_id, old_job = schedule(demo.conn, "full")
    old_label = completed_backup(demo.conn, old_id, old_job, FULL_LABEL)["metadata"]["label"]
    demo.pgbackrest("--type=incr", "backup")  # by hand, not through the queue
    new_id, new_job = schedule(demo.conn, "full")
    completed_backup(demo.conn, new_id, new_job, FULL_LABEL)
    tool = replace(default_tool("pgbackrest"), path=PGBACKREST, run_as="postgres", config=str(demo.conf))
    config = Config(dsn=demo.cluster.dsn, worker_id="host-x", tools=Tools((tool,)))

    done = apply_retention(Queue(demo.conn), config, Retention(target={"tool": "pgbackrest", "stanza": "demo"}))

    assert old_id in {row[0] for row in done.marked}
    error = {each.backup_id: each.error for each in done.removals}[old_id]
    assert error is not None and error.startswith(f"held: pgBackRest would expire with {old_label} the set(s) ")
    assert f"{old_label}_" in error and "does not hold as expired" in error
    info = json.loads(demo.pgbackrest("info", "--output=json").stdout)[0]
    labels = {each["label"] for each in info["backup"]}
    assert old_label in labels and any(label.startswith(f"{old_label}_") for label in labels)
    status = query(
        demo.conn, "SELECT removal, removal_error FROM pggit.backup_expiration_status WHERE backup_id = %s", (old_id,)
    )
    assert status == [{"removal": "failed", "removal_error": error}]


def _switch_wal(conn) -> str:
    """Writes a little WAL, closes the segment and writes into the next; returns the closed one's name."""
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS public.wal_noise (x int); INSERT INTO public.wal_noise VALUES (1)")
        cur.execute("SELECT pg_walfile_name(pg_switch_wal())")
        closed = cur.fetchone()[0]
        cur.execute("INSERT INTO public.wal_noise VALUES (2)")  # the server is now in the next segment
        return closed


@pytest.mark.slow
def test_wal_freshness_of_a_stanza_falls_behind_while_archiving_fails_and_recovers(demo):
    """The queue database is the archived server (same system id): its current segment and
    pg_stat_archiver join pgBackRest's reading of the archive."""
    tool = replace(default_tool("pgbackrest"), path=PGBACKREST, run_as="postgres", config=str(demo.conf))
    target = {"tool": "pgbackrest", "stanza": "demo"}
    config = Config(
        dsn=demo.cluster.dsn, worker_id="host-w", tools=Tools((tool,)), retention=(Retention(target=target),)
    )
    checks, queue, key = ArchiveChecks(config, IdleLink()), Queue(demo.conn), json.dumps(target, sort_keys=True)
    assert checks.targets == [target]

    def fresh() -> dict:
        return query(demo.conn, "SELECT * FROM pggit.archive_freshness")[0]

    closed = _switch_wal(demo.conn)
    wait_until(
        lambda: scalar(demo.conn, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= closed,
        60,
        "archived",
    )
    reading = checks.check(queue, target, key)
    assert reading.error is None and reading.archive_max >= closed and reading.server_segment > closed
    assert fresh()["wal_age_seconds"] < 60 and fresh()["server_position_known"]

    demo.conn.cursor().execute("ALTER SYSTEM SET archive_command = '/bin/false'")
    demo.conn.cursor().execute("SELECT pg_reload_conf()")
    try:
        failed_before = scalar(demo.conn, "SELECT failed_count FROM pg_stat_archiver")
        stuck = _switch_wal(demo.conn)
        wait_until(lambda: scalar(demo.conn, "SELECT failed_count FROM pg_stat_archiver") > failed_before, 60, "fails")
        _switch_wal(demo.conn)
        behind = checks.check(queue, target, key)
        shown = fresh()
        assert behind.archive_max < stuck and shown["behind_since"] is not None and shown["wal_age_seconds"] >= 0
        assert shown["failed_count"] > failed_before and shown["last_failed_wal"] == stuck
    finally:
        demo.conn.cursor().execute("ALTER SYSTEM RESET archive_command")
        demo.conn.cursor().execute("SELECT pg_reload_conf()")
    last = _switch_wal(demo.conn)
    wait_until(
        lambda: scalar(demo.conn, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= last,
        90,
        "caught up",
    )
    checks.check(queue, target, key)
    assert fresh()["behind_since"] is None and fresh()["wal_age_seconds"] < 60


# -- the adapter's readings, without a cluster ------------------------------------------------


def _run(exit_code, stderr=b"", stdout=b""):
    return RunResult(
        argv=(PGBACKREST,),
        exit_code=exit_code,
        signal=None,
        timed_out=False,
        stopped_reason=None,
        duration=0.5,
        timeout=600,
        stdout=CapturedOutput(head=stdout),
        stderr=CapturedOutput(head=stderr),
    )


TOOL = replace(default_tool("pgbackrest"), run_as="postgres", config="/etc/pggit/pgbackrest.conf")


@pytest.mark.parametrize(
    "code, words, retryable",
    [
        (50, "another pgBackRest process holds the stanza lock", True),
        (56, "cannot connect to PostgreSQL", True),
        (87, "archive_mode is off: set archive_mode = on", False),
        (68, "archive_command does not call pgbackrest: set archive_command = 'pgbackrest --stanza=demo", False),
        (31, "invalid option", False),
        (32, "bad option value", False),
        (82, "WAL did not reach the archive in time", True),
    ],
)
def test_known_exit_codes_say_what_to_do_and_whether_a_retry_helps(code, words, retryable):
    message, retry = explain_exit(_run(code, b"ERROR: [%03d]: detail line" % code), "backup", "demo", TOOL)
    assert words in message and f"exit {code}" in message and "detail line" in message
    assert retry is retryable


def test_unknown_exit_code_is_retryable_with_the_last_stderr_lines():
    message, retry = explain_exit(_run(199, b"one\ntwo\nthree"), "backup", "demo", TOOL)
    assert retry and message.startswith("pgBackRest backup of stanza 'demo' failed: pgbackrest exit 199")
    assert "three" in message


def test_new_label_is_the_reported_one_among_those_not_seen_before():
    before = ["20260101-000000F"]
    after = before + ["20260102-000000F", "20260102-000000F_20260102-010000I"]
    assert new_label(before, after, "INFO: new backup label = 20260102-000000F\n") == "20260102-000000F"
    assert new_label(before, after, "") == "20260102-000000F_20260102-010000I"
    assert new_label(after, after, "INFO: new backup label = 20260102-000000F\n") is None


def test_verify_report_fails_the_backup_when_it_or_its_full_or_wal_is_damaged_not_for_others():
    report = (
        "stanza: demo\nstatus: error\n"
        "  archiveId: 15-1, total WAL checked: 4, total valid WAL: 4\n"
        "    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n"
        "  backup: 20260101-000000F, status: invalid, total files checked: 964, total valid files: 963\n"
        "    missing: 0, checksum invalid: 1, size invalid: 0, other: 0\n"
        "  backup: 20260102-000000F, status: valid, total files checked: 964, total valid files: 964\n"
        "    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n"
        "  backup: 20260102-000000F_20260103-000000I, status: valid, total files checked: 9, total valid files: 9\n"
        "    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n"
    )
    ok = judge_verify(report, "20260102-000000F_20260103-000000I", ["20260102-000000F"])
    assert ok.verified and "20260101-000000F" in ok.details["other_invalid_backups"]
    bad = judge_verify(report, "20260101-000000F_20260103-000000I", ["20260101-000000F"])
    assert not bad.verified and bad.fails_job and "backup 20260101-000000F is invalid" in str(bad.problem)
    wal = judge_verify(
        report.replace("missing: 0, checksum invalid: 0, size", "missing: 2, checksum invalid: 0, size", 1),
        "20260102-000000F",
        [],
    )
    assert not wal.verified and "archive 15-1" in str(wal.problem) and "missing: 2" in str(wal.problem)
    assert judge_verify("", "20260102-000000F", []).fails_job


def test_restore_argv_names_the_set_the_target_and_keeps_the_copy_off_the_source_archive():
    argv = restore_argv(TOOL, "pgbackrest://demo/20260102-000000F_20260103-000000I", "/srv/copy/")
    assert argv == [
        PGBACKREST,
        "--config=/etc/pggit/pgbackrest.conf",
        "--stanza=demo",
        "--pg1-path=/srv/copy",
        "--set=20260102-000000F_20260103-000000I",
        "--archive-mode=off",
        "--tablespace-map-all=/srv/copy.tablespaces",
        "restore",
    ]
    assert "--repo=2" in restore_argv(TOOL, "pgbackrest://demo/20260102-000000F", "/srv/copy", repo=2)
    for location in (
        "pgbackrest://demo",
        "pgbackrest://demo/latest",
        "barman://demo/x",
        "pgbackrest://-x/20260102-000000F",
    ):
        with pytest.raises(JobError):
            parse_location(location)
    with pytest.raises(JobError):
        restore_argv(TOOL, "pgbackrest://demo/20260102-000000F", "relative/dir")
