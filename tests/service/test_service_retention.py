"""Retention run by the workers (issue 10, schema/017), with real supervisors, real pg_dump and
real files: a successful backup queues its target's retention job, which a worker applies with
its own rules (old dumps expired and their files removed, the kept ones untouched);
`pggit-supervisor retention` queues a job per target (--dry-run queues nothing); and the target's
schedule makes one job per slot however many supervisors carry it."""

from __future__ import annotations

import signal
import subprocess
from datetime import timedelta

import pytest

from helpers import CLI, ROOT
from helpers.db import query, scalar
from helpers.processes import wait_until
from helpers.retention import make, recorded_dump

NEVER = "0 0 1 1 *"  # a schedule that stays out of the way (once a year)


@pytest.fixture
def dumps_service(make_service, backup_dir, tmp_path):
    def make(name: str = "host-r", schedule: str = NEVER, **settings):
        directory = tmp_path / name
        directory.mkdir()
        return make_service(
            directory=directory,
            worker_id=name,
            tools={"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}},
            retention=[{"target": {"tool": "pg_dump"}, "keep_last": 2, "grace": "1h", "schedule": schedule}],
            **settings,
        )

    return make


def expired(db) -> set[str]:
    return {row["backup_id"] for row in query(db, "SELECT backup_id::text FROM pggit.backup_expirations")}


def retention_jobs(db) -> list[dict]:
    return query(db, "SELECT * FROM pggit.maintenance_job_queue ORDER BY enqueued_at")


def test_a_successful_backup_queues_its_targets_retention_which_a_worker_applies(dumps_service, db, dsn, backup_dir):
    old = [recorded_dump(db, dsn, backup_dir, days) for days in (30, 20, 10)]
    service = dumps_service().start()
    service.wait_for_log("worker started", count=2)
    assert retention_jobs(db) == [], "nothing asks for a run before a backup completes"

    new = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir),))
    wait_until(lambda: [job for job in retention_jobs(db) if job["status"] == "completed"], 60, "the retention job ran")
    (job,) = retention_jobs(db)
    assert (job["reason"], job["backup_id"], job["attempts"]) == ("backup", new, 1)
    assert job["worker_id"].startswith("host-r/") and job["error"] is None
    assert scalar(db, "SELECT verified_at IS NOT NULL FROM pggit.backups WHERE backup_id = %s", (new,))

    (oldest, _), (older, _), (kept, kept_path) = old
    assert expired(db) == {oldest, older}, "keep_last 2: the new backup and the newest old one stay"
    assert set(job["summary"]["removed"]) == {oldest, older} and job["summary"]["removal_failed"] == {}
    assert not old[0][1].exists() and not old[1][1].exists() and kept_path.is_file()
    location = scalar(db, "SELECT location FROM pggit.backups WHERE backup_id = %s", (new,))
    assert location.startswith("file://") and (backup_dir / location.rsplit("/", 1)[1]).exists()
    service.wait_for_log("retention job completed.*marked=2 removed=2 failed=0")
    assert service.stop() == 0
    assert kept in {row["backup_id"] for row in query(db, "SELECT backup_id::text FROM pggit.backups")}


def test_the_retention_command_queues_a_job_per_target_and_its_dry_run_queues_nothing(
    dumps_service, db, dsn, backup_dir
):
    old = [recorded_dump(db, dsn, backup_dir, days) for days in (30, 20, 10)]
    service = dumps_service()

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*CLI, "retention", "-c", str(service.config_path), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    shown = command("--dry-run")
    assert shown.returncode == 0 and "would expire 1" in shown.stdout, shown.stdout + shown.stderr
    assert shown.stdout.splitlines()[-1].startswith("  last retention job: none yet")
    assert retention_jobs(db) == [] and expired(db) == set(), "--dry-run changes nothing"

    queued = command()
    assert queued.returncode == 0, queued.stderr
    (job,) = retention_jobs(db)
    assert f"target pg_dump: retention job {job['job_id']} queued for the workers" in queued.stdout
    assert (job["status"], job["reason"]) == ("queued", "requested") and expired(db) == set()
    assert command().stdout == queued.stdout, "asking again while it is queued asks for the same job"

    service.start()
    wait_until(lambda: retention_jobs(db)[0]["status"] == "completed", 60, "a worker ran the queued job")
    assert expired(db) == {old[0][0]} and not old[0][1].exists() and old[1][1].is_file()
    assert service.stop() == 0
    last = command("--dry-run").stdout.splitlines()[-1]
    assert last.startswith("  last retention job: completed ") and " by host-r/" in last
    assert last.endswith(f"(requested, marked 1, removed 1)  {job['job_id']}")


def test_two_supervisors_carrying_a_targets_schedule_make_one_job_per_slot(dumps_service, db, dsn, backup_dir):
    recorded_dump(db, dsn, backup_dir, 30)
    hosts = [dumps_service(name, "* * * * *", schedule_interval=1) for name in ("host-a", "host-b")]
    for service in hosts:
        service.start()
    wait_until(
        lambda: [job for job in retention_jobs(db) if job["status"] == "completed"], 60, "a scheduled run completed"
    )
    for service in hosts:
        service.wait_for_log("worker started", count=2)
    for service in hosts:
        assert service.stop() == 0

    jobs = retention_jobs(db)
    slots = [job["slot_time"] for job in jobs]
    assert all(job["reason"] == "schedule" for job in jobs) and None not in slots
    assert len(slots) == len(set(slots)), "each slot became one job, whichever host asked first"
    assert {job["worker_id"].split("/")[0] for job in jobs if job["worker_id"]} <= {"host-a", "host-b"}
    assert all(job["status"] == "completed" and job["error"] is None for job in jobs if job["started_at"])


def test_a_retention_call_the_database_times_out_fails_the_job_and_keeps_the_connection(
    dumps_service, db, dsn, backup_dir, login_as
):
    """A login with no pggit role can take any advisory lock, also the key expire_backups waits
    for: the worker's call then ends on lock_timeout (an OperationalError, over a live
    connection). That is the database refusing the call, not a lost connection: the job fails
    now, saying why, instead of staying `running` until its lease ends and counting a lost worker.
    (The lease and worker_timeout outlive the 10 s lock_timeout here, as their defaults do.)"""
    recorded_dump(db, dsn, backup_dir, 30)
    target = '{"tool": "pg_dump"}'
    key = scalar(
        db, "SELECT hashtextextended('pggit-retention:' || pggit._require_retention_target(%s)::text, 0)", (target,)
    )
    squatter, _ = login_as()
    scalar(squatter, "SELECT pg_advisory_lock(%s)", (key,))
    service = dumps_service(lease_seconds=60, worker_timeout=30).start()
    service.wait_for_log("worker started", count=2)
    job_id = scalar(db, "SELECT pggit.enqueue_retention(%s)::text", (target,))

    (job,) = wait_until(
        lambda: [job for job in retention_jobs(db) if job["status"] not in ("queued", "running")],
        40,
        "the retention job ended",
    )
    assert (job["job_id"], job["status"], job["attempts"]) == (job_id, "failed", 1)
    assert "lock timeout" in job["error"], job["error"]
    assert "database call failed" not in service.log(), "the connection was fine: no reconnect"

    scalar(squatter, "SELECT pg_advisory_unlock(%s)", (key,))
    scalar(db, "SELECT pggit.enqueue_retention(%s)", (target,))
    wait_until(lambda: retention_jobs(db)[-1]["status"] == "completed", 40, "the next request ran")
    assert service.stop() == 0


def test_a_retention_schedule_that_never_fires_leaves_the_workers_running(dumps_service, db, backup_dir):
    """check-config accepts "0 0 30 2 *" (croniter does); the idle tick looking for its latest
    slot must not kill the worker, or every worker dies in a loop and the supervisor gives up."""
    service = dumps_service(schedule="0 0 30 2 *", schedule_interval=1).start()
    service.wait_for_log("worker started", count=2)
    backup = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir),))
    wait_until(
        lambda: [job for job in retention_jobs(db) if job["status"] == "completed"], 60, "the backup's retention ran"
    )
    assert scalar(db, "SELECT status FROM pggit.backups WHERE backup_id = %s", (backup,)) == "completed"
    assert "worker died" not in service.log(), service.log()[-3000:]
    assert service.stop() == 0


def test_a_fast_stop_during_a_removal_hands_the_job_back_without_spending_the_other_removals(
    make_service, db, tmp_path
):
    """SIGQUIT while `pgbackrest expire` runs: that tool is stopped and the job handed back; the
    target's other expired sets are left for the next run, not each tried once more under a
    stopping worker (their guard's `info` killed at once, recorded as a failed attempt)."""
    script = tmp_path / "pgbackrest"
    started = tmp_path / "expire-started"
    script.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do case "$arg" in\n'
        '  info) echo \'[{"name": "s1", "backup": []}]\'; exit 0;;\n'
        f"  expire) echo $$ >> {started}; sleep 60; exit 0;;\n"
        "esac; done\n"
    )
    script.chmod(0o755)
    now = scalar(db, "SELECT now()")
    labels = [f"2026010{day}-000000F" for day in (1, 2, 3, 4)]
    backups = [
        make(db, now - timedelta(days=40 - day), backup_type="full", label=label) for day, label in enumerate(labels)
    ]
    service = make_service(
        worker_id="host-q",
        workers=1,
        lease_seconds=60,
        tools={"pgbackrest": {"path": str(script)}},
        retention=[{"target": {"tool": "pgbackrest", "stanza": "s1"}, "keep_last": 1, "schedule": NEVER}],
    ).start()
    service.wait_for_log("worker started")
    scalar(db, 'SELECT pggit.enqueue_retention(\'{"tool": "pgbackrest", "stanza": "s1"}\')')
    wait_until(lambda: started.exists() and started.read_text(), 30, "the first expire runs")
    assert service.stop(signal.SIGQUIT, timeout=30) == 0

    attempts = {
        row["backup_id"]: row["removal_attempts"]
        for row in query(db, "SELECT backup_id::text, removal_attempts FROM pggit.backup_expirations")
    }
    assert set(attempts) == set(backups[:3]), "keep_last 1: the three older sets were marked"
    assert attempts[backups[0]] == 1, "the interrupted removal counts as tried"
    assert attempts[backups[1]] == attempts[backups[2]] == 0, attempts
    (job,) = retention_jobs(db)
    assert job["status"] == "queued" and "handed back" in job["error"]
