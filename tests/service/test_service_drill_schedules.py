"""Restore drills on a schedule (issue 11) with a real supervisor, a real dump and a real drill
sandbox: a drill schedule's slot queues a drill of the target's newest verified backup, which
passes and records the measured time to restore."""

from __future__ import annotations

from helpers.db import query
from helpers.processes import wait_until
from helpers.retention import recorded_dump

DRILL = {"name": "hourly-drill", "drill": {"every": "1h", "target": {"tool": "pg_dump"}}, "max_drill_age": "2h"}


def test_a_drill_schedule_drills_the_newest_verified_backup_and_records_its_time_to_restore(
    service, db, dsn, backup_dir
):
    recorded_dump(db, dsn, backup_dir, 3)
    newest, _ = recorded_dump(db, dsn, backup_dir, 1)
    running = service(schedules=[DRILL], schedule_interval=1)

    def drilled():
        rows = query(db, "SELECT * FROM pggit.restore_drill_status WHERE backup_id = %s", (newest,))
        return rows[0] if rows else None

    status = wait_until(drilled, 120, "the scheduled drill ran")
    (slot,) = query(db, "SELECT * FROM pggit.drill_slots")
    assert (slot["outcome"], slot["backup_id"], slot["recorded_by"].split("/")[0]) == ("enqueued", newest, "test")
    assert status["restore_test_result"] == "passed", status
    assert status["restore_seconds"] > 0 and status["target"]["tool"] == "pg_dump"
    running.wait_for_log("scheduled restore drill enqueued")
    assert running.stop() == 0
    assert len(query(db, "SELECT * FROM pggit.backup_jobs WHERE tool = 'restore_test'")) == 1, "one slot, one drill"
