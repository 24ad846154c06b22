"""`pggit-supervisor status` against real PostgreSQL: the workers a real supervisor records, the
`--check` probe's exit code, summary and performance data for each case that must alert (stale,
never backed up, unacknowledged failures, no workers, an unreachable database) and those that
must not, and the documented --json shape."""

from __future__ import annotations

import json
import re
import signal
from datetime import datetime, timedelta, timezone

import pytest

from helpers.db import query, scalar
from helpers.processes import wait_until
from helpers.queue import force, schedule_dump
from helpers.retention import make
from helpers.service import queue_fake, wait_for_state


def ago(delta: timedelta) -> datetime:
    """A time that long before this moment (not the module's import: a long run drifts)."""
    return datetime.now(timezone.utc) - delta


NIGHTLY = {"name": "nightly", "cron": "0 1 * * *", "tool": "pg_dump", "max_age": "1d"}
PERF = re.compile(r"^[A-Za-z0-9_.:/-]+=(U|[0-9.]+)(s)?;[0-9.]*;[0-9.]*;[0-9.]*$")


@pytest.fixture
def status(make_service, db):
    """status(*args, **settings) -> the finished `pggit-supervisor status ARGS` of a config with
    the pg_dump schedule NIGHTLY (max_age 1d) on the test database; no supervisor runs."""

    def run(*args: str, **settings):
        settings.setdefault("tools", {"pg_dump": {}})
        settings.setdefault("schedules", [NIGHTLY])
        if settings["schedules"] is None:  # a config without schedules
            del settings["schedules"]
        return make_service(**settings).command("status", *args)

    return run


def worker_seen(db, seconds_ago: float = 0) -> None:
    """A worker row as a live worker writes it (the test's login owns the tables)."""
    db.cursor().execute(
        "SELECT pggit.record_worker('test/1', 'machine', 4242, '0.1.0', 'db', ARRAY['pg_dump'], now(), NULL)"
    )
    force(db, "UPDATE pggit.backup_workers SET last_seen_at = now() - make_interval(secs => %s)", (seconds_ago,))


def permanently_failed(db) -> str:
    _, job_id = schedule_dump(db)
    force(
        db,
        "UPDATE pggit.backup_jobs SET status = 'failed', attempts = max_attempts, completed_at = now(),"
        " last_error = 'pg_dump: disk full' WHERE job_id = %s",
        (job_id,),
    )
    return str(job_id)


def check(status, **settings) -> tuple[int, str, list[str]]:
    done = status("--check", **settings)
    assert done.stdout.count("\n") == 1, "one line: " + done.stdout + done.stderr
    summary, _, perf = done.stdout.strip().partition(" | ")
    assert all(PERF.match(item) for item in perf.split()), perf
    return done.returncode, summary, perf.split()


def test_a_real_supervisor_records_its_workers_and_marks_them_stopped_on_an_orderly_stop(make_service, db):
    service = make_service(workers=2).start()
    rows = wait_until(
        lambda: len(found := query(db, "SELECT * FROM pggit.backup_worker_status ORDER BY worker_id")) == 2 and found,
        20,
        "two worker rows",
    )
    pids = sorted(worker.pid for worker in service.workers())
    assert [row["worker_id"] for row in rows] == ["test/1", "test/2"]
    assert sorted(row["pid"] for row in rows) == pids and {row["version"] for row in rows} == {"0.1.0"}
    assert all(row["tools"] == ["custom"] and row["stopped_at"] is None for row in rows)

    assert service.stop(signal.SIGTERM) == 0
    assert scalar(db, "SELECT count(*) FROM pggit.backup_worker_status WHERE stopped_at IS NOT NULL") == 2


def test_a_worker_names_the_job_it_runs_while_it_runs_it(make_service, db, tmp_path):
    _, job_id, _ = queue_fake(db, tmp_path, "--sleep", "30", tag="long")
    make_service(workers=1).start()
    wait_until(
        lambda: query(db, "SELECT current_job_id::text AS job FROM pggit.backup_worker_status") == [{"job": job_id}],
        20,
        "the worker row naming the running job",
    )


def test_a_real_pg_dump_backup_and_the_supervisor_that_made_it_make_the_probe_ok(service, db, backup_dir):
    running = service(retention=[{"target": {"tool": "pg_dump", "schema": "public"}}], workers=1)
    never = running.command("status", "--check")
    assert never.returncode == 2 and "never backed up" in never.stdout, never.stdout

    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', 'public', 'custom', %s)", (str(backup_dir),))
    job = str(scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))
    wait_for_state(db, job, "completed", timeout=90)
    done = running.command("status", "--check")
    assert done.returncode == 0 and done.stdout.startswith("PGGIT OK - 1 target(s)"), done.stdout + done.stderr
    assert json.loads(running.command("status", "--json").stdout)["databases"][0]["targets"][0]["newest_verified"][
        "backup_id"
    ] == str(backup_id)


def test_fresh_backups_and_a_live_worker_are_ok(status, db):
    make(db, ago(timedelta(hours=2)))
    worker_seen(db)

    code, summary, perf = check(status)
    assert code == 0 and summary.startswith("PGGIT OK - 1 target(s)"), summary
    assert any(p.startswith(f"{scalar(db, 'SELECT current_database()')}_backup_pg_dump:") for p in perf), perf


def test_a_backup_older_than_max_age_is_critical_and_one_near_it_a_warning(status, db):
    backup = make(db, ago(timedelta(hours=20)))
    worker_seen(db)
    code, summary, _ = check(status)
    assert code == 1 and "83% of max_age 1d" in summary, summary

    force(db, "UPDATE pggit.backups SET completed_at = now() - interval '3 days' WHERE backup_id = %s", (backup,))
    code, summary, _ = check(status)
    assert code == 2 and "newest verified backup is 3d old (max_age 1d)" in summary, summary


def test_a_target_never_backed_up_is_critical_with_an_undetermined_age(status, db):
    make(db, ago(timedelta(hours=1)), verified=False)  # a backup nobody could read back is none
    worker_seen(db)

    code, summary, perf = check(status)
    assert code == 2 and "never backed up" in summary, summary
    assert [p for p in perf if "_backup_" in p][0].split("=")[1].startswith("U;")


def test_a_retention_target_without_a_schedule_is_checked_for_having_a_backup(status, db):
    worker_seen(db)
    code, summary, _ = check(status, schedules=None, retention=[{"target": {"tool": "pgbackrest", "stanza": "s1"}}])
    assert code == 2 and "pgbackrest:s1: never backed up" in summary


def test_unacknowledged_permanent_failures_are_critical_until_acknowledged(status, db):
    make(db, ago(timedelta(hours=2)))
    worker_seen(db)
    job_id = permanently_failed(db)

    code, summary, perf = check(status)
    assert code == 2 and "1 unacknowledged permanent failure(s)" in summary, summary
    assert any(p.endswith("_unacknowledged_failures=1;;0;0") for p in perf)
    db.cursor().execute("SELECT pggit.acknowledge_failure(%s, 'disk grown, rerun ok')", (job_id,))
    assert check(status)[0] == 0


def test_no_worker_seen_for_worker_silence_is_critical(status, db):
    make(db, ago(timedelta(hours=2)))
    code, summary, _ = check(status)
    assert code == 2 and "no worker ever seen" in summary

    worker_seen(db, seconds_ago=600)
    code, summary, _ = check(status, worker_silence="5m")
    assert code == 2 and re.search(r"newest worker record is 10m( \d+s)? old \(worker_silence 5m\)", summary), summary


def test_an_unreachable_database_is_unknown(status, db):
    done = status("--check", dsn="host=127.0.0.1 port=1 dbname=nothing user=nobody connect_timeout=2")
    assert done.returncode == 3 and done.stdout.startswith("PGGIT UNKNOWN - database nothing: cannot be read")


def test_a_database_without_the_status_schema_is_unknown_not_ok(status, empty_db):
    done = status("--check", dsn=empty_db)
    assert done.returncode == 3 and "cannot be read" in done.stdout


def test_an_invalid_config_is_unknown_for_the_probe(status):
    done = status("--check", workers="many")
    assert done.returncode == 3 and done.stdout.startswith("PGGIT UNKNOWN - the config cannot be read")


def test_json_has_the_documented_shape(status, db):
    make(db, ago(timedelta(hours=2)))
    worker_seen(db)
    failed = permanently_failed(db)

    done = status("--json")
    document = json.loads(done.stdout)
    assert done.returncode == 0 and document["format"] == 1
    assert document["check"] == {"state": "CRITICAL", "code": 2, "summary": document["check"]["summary"]}
    (database,) = document["databases"]
    assert set(database) == {
        "name",
        "readable",
        "error",
        "queue",
        "running",
        "workers",
        "targets",
        "schedules",
        "unacknowledged_failures",
        "dead_lettered_notifications",
    }
    assert set(database["queue"]) == {
        "ready",
        "in_progress",
        "will_retry",
        "completed_24h",
        "permanently_failed_24h",
        "cancelled_24h",
        "oldest_ready_seconds",
    }
    (target,) = database["targets"]
    assert (target["label"].split(":")[0], target["schedules"], target["max_age_seconds"], target["state"]) == (
        "pg_dump",
        ["nightly"],
        86400,
        "ok",
    )
    assert 7000 < target["newest_verified"]["age_seconds"] < 7400
    assert target["last_failure"]["job_id"] == failed and target["last_failure"]["error"] == "pg_dump: disk full"
    assert database["workers"][0]["state"] == "alive" and database["workers"][0]["worker_id"] == "test/1"
    (schedule,) = database["schedules"]
    assert (schedule["name"], schedule["target"], schedule["max_age_seconds"]) == ("nightly", target["label"], 86400)
    assert schedule["next_slot"].endswith("01:00:00+00:00") and schedule["last_slot"] is None
    assert database["unacknowledged_failures"]["count"] == 1
    assert database["unacknowledged_failures"]["newest"][0]["job_id"] == failed
    assert database["dead_lettered_notifications"] == 0, "none dead-lettered (pggit.notification_status)"


def test_the_table_shows_each_part_for_people(status, db):
    make(db, ago(timedelta(hours=2)))
    worker_seen(db)
    permanently_failed(db)

    done = status()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("overall: CRITICAL: ")
    for part in ("queue: 0 ready", "workers:", "targets:", "schedules:", "unacknowledged permanent failures: 1"):
        assert part in out, out
    assert re.search(r"pg_dump:\S+\s+OK\s+2h\s+1d", out), out


def test_a_wal_archive_never_read_or_behind_for_max_wal_age_is_critical(status, db):
    make(db, ago(timedelta(hours=1)), backup_type="full", stanza="s1")
    worker_seen(db)
    settings = {"schedules": None, "retention": [{"target": {"tool": "pgbackrest", "stanza": "s1"}}]}
    code, summary, _ = check(status, **settings)
    assert code == 2 and "pgbackrest:s1: no reading of its WAL archive yet" in summary, summary

    reading = {"archive_max": "000000010000000000000004", "server_segment": "000000010000000000000005"}
    db.cursor().execute(
        "SELECT 1 FROM pggit.record_archive_status('test/1', %s, %s)",
        (json.dumps({"tool": "pgbackrest", "stanza": "s1"}), json.dumps(reading)),
    )
    code, summary, perf = check(status, **settings)
    assert code == 0, summary
    # the age since the reading that found the archive keeping up: seconds, not 0 for ever
    assert any(re.search(r"_wal_pgbackrest:s1_age=[0-9.]+s;2880;3600;0", p) for p in perf), perf

    behind = {**reading, "server_segment": "000000010000000000000009"}
    db.cursor().execute(
        "SELECT 1 FROM pggit.record_archive_status('test/1', %s, %s)",
        (json.dumps({"tool": "pgbackrest", "stanza": "s1"}), json.dumps(behind)),
    )
    force(db, "UPDATE pggit.archive_status SET behind_since = now() - interval '2 hours'")
    code, summary, _ = check(status, **settings)
    assert code == 2 and "pgbackrest:s1: oldest unarchived WAL is 2h old (max_wal_age 1h)" in summary, summary


def test_a_drill_schedule_whose_target_never_passed_a_drill_within_max_drill_age_is_critical(status, db):
    backup = make(db, ago(timedelta(hours=2)))
    worker_seen(db)
    drill = {"name": "daily-drill", "drill": {"every": "1d", "target": {"tool": "pg_dump"}}, "max_drill_age": "1d"}
    code, summary, _ = check(status, schedules=[NIGHTLY, drill])
    assert code == 2 and "daily-drill: no restore drill ever passed" in summary, summary

    force(
        db,
        "UPDATE pggit.backups SET restore_tested_at = now() - interval '2 hours', restore_test_result = 'passed'"
        " WHERE backup_id = %s",
        (backup,),
    )
    code, summary, _ = check(status, schedules=[NIGHTLY, drill])
    assert code == 0, summary
