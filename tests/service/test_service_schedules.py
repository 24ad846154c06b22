"""Schedules run by real supervisors: three started at once with the same schedules make one job
per slot, and `pggit-supervisor schedules` shows each schedule's last slot, outcome and next fire."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from helpers.db import query, scalar
from helpers.processes import wait_until
from helpers.service import Service
from pggit_supervisor.scheduler import Schedule

EVERY_MINUTE = {
    "name": "every-minute",
    "cron": "* * * * *",
    "tool": "pg_dump",
    "args": {"output_path": "/backups", "options": {"priority": 7}},
    "catch_up": "all",
    "starting_deadline": "1h",
    "overlap": "queue",
}


def definition(entry: dict) -> dict:
    """What the supervisors send for `entry`, as the config loads it."""
    values = {**entry, "starting_deadline": 3600}
    return Schedule(**values).definition()


def register_in_the_past(db, entry: dict, minutes: int) -> None:
    """The schedule as if it had existed for `minutes`: its slots since then are due at once
    (instead of waiting for the next minute to pass), caught up by catch_up: all."""
    scalar(
        db,
        "SELECT registered_at FROM pggit.touch_backup_schedule('seed', %s, %s, now() - make_interval(mins => %s))",
        (entry["name"], json.dumps(definition(entry)), minutes),
    )
    db.cursor().execute("DELETE FROM pggit.backup_schedule_hosts WHERE host = 'seed'")


@pytest.fixture
def services(tmp_path, make_service):
    """services(name, **settings) -> a supervisor of its own directory and worker id, on the test's database."""

    def make(name: str, **settings) -> Service:
        directory = tmp_path / name
        directory.mkdir()
        return make_service(directory=directory, worker_id=name, **settings)

    return make


def test_three_supervisors_with_the_same_schedule_enqueue_each_slot_exactly_once(services, db):
    register_in_the_past(db, EVERY_MINUTE, 10)
    hosts = [services(name, schedules=[EVERY_MINUTE], schedule_interval=1) for name in ("sup-a", "sup-b", "sup-c")]
    for service in hosts:
        service.start()

    wait_until(
        lambda: scalar(db, "SELECT count(*) FROM pggit.backup_schedule_slots") >= 10, 60, "the 10 slots caught up"
    )
    for service in hosts:
        service.wait_for_log("worker started", count=2)
    for service in hosts:
        assert service.stop() == 0

    slots = query(db, "SELECT slot_time, outcome, backup_id, recorded_by FROM pggit.backup_schedule_slots")
    assert {slot["outcome"] for slot in slots} == {"enqueued"}
    jobs = scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE tool = 'pg_dump' AND priority = 7")
    assert jobs == len(slots) == len({slot["backup_id"] for slot in slots})
    logged = sum(len(re.findall("scheduled backup enqueued", service.log())) for service in hosts)
    assert logged == len(slots), "each slot was enqueued by exactly one supervisor, which logged it"
    assert {slot["recorded_by"] for slot in slots} <= {"sup-a", "sup-b", "sup-c"}
    minutes = sorted(slot["slot_time"] for slot in slots)
    assert all(b - a == timedelta(minutes=1) for a, b in zip(minutes, minutes[1:], strict=False))


def test_the_schedules_command_shows_last_slot_outcome_and_next_fire(services, db, dsn):
    register_in_the_past(db, EVERY_MINUTE, 3)
    off = {**EVERY_MINUTE, "name": "paused", "enabled": False, "catch_up": "latest"}
    service = services("sup-a", schedules=[EVERY_MINUTE, off], schedule_interval=1)
    service.start()
    wait_until(
        lambda: (
            scalar(db, "SELECT count(*) FROM pggit.backup_schedule_slots WHERE schedule_name = 'every-minute'") >= 3
        ),
        60,
        "slots recorded",
    )
    assert service.stop() == 0

    shown = service.command("schedules")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == [
        "SCHEDULE",
        "CRON",
        "TIMEZONE",
        "TOOL",
        "LAST",
        "SLOT",
        "(UTC)",
        "OUTCOME",
        "NEXT",
        "FIRE",
        "(UTC)",
    ]
    minute = next(line for line in lines if line.startswith("every-minute"))
    last = scalar(db, "SELECT max(slot_time) FROM pggit.backup_schedule_slots WHERE schedule_name = 'every-minute'")
    assert last.strftime("%Y-%m-%d %H:%M") in minute and "enqueued (ready)" in minute
    assert re.search(r"enqueued \(ready\)\s+\d{4}-\d\d-\d\d \d\d:\d\d$", minute), minute
    paused = next(line for line in lines if line.startswith("paused"))
    assert paused.endswith("disabled")


def test_a_scheduled_slot_runs_a_real_pg_dump_that_is_verified(services, db, backup_dir):
    nightly = {
        "name": "dump",
        "cron": "* * * * *",
        "tool": "pg_dump",
        "args": {"output_path": str(backup_dir)},
        "catch_up": "latest",
        "starting_deadline": "1h",
        "overlap": "skip",
    }
    register_in_the_past(db, nightly, 3)
    tools = {"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}}
    service = services("sup-a", schedules=[nightly], schedule_interval=1, tools=tools).start()

    status = wait_until(
        lambda: (
            (rows := query(db, "SELECT * FROM pggit.backup_schedule_status"))
            and rows[0]["last_job_state"] == "completed"
            and rows[0]
        ),
        90,
        "the scheduled dump to complete",
    )
    assert service.stop() == 0
    backup = query(
        db, "SELECT status, verified_at, location FROM pggit.backups WHERE backup_id = %s", (status["last_backup_id"],)
    )[0]
    assert backup["status"] == "completed" and backup["verified_at"] is not None
    path = Path(backup["location"].removeprefix("file://"))
    assert path.parent == backup_dir and path.is_file() and path.stat().st_size > 0
    slots = {(s["outcome"], s["reason"]) for s in query(db, "SELECT outcome, reason FROM pggit.backup_schedule_slots")}
    assert ("skipped", "missed") in slots, "catch_up latest passed over the older slots of the 3 minutes"
    assert slots <= {("enqueued", None), ("skipped", "missed"), ("skipped", "overlap")}
