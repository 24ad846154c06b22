"""What `pggit-supervisor schedules` prints, from the config's schedules and the view's rows."""

from __future__ import annotations

from datetime import datetime, timezone

from pggit_supervisor.schedule_report import render
from pggit_supervisor.scheduler import Schedule
from pggit_supervisor.slots import ScheduleStatus

UTC = timezone.utc
NOW = datetime(2026, 12, 2, 1, 30, tzinfo=UTC)


def status(name: str, **values) -> ScheduleStatus:
    row = {
        "schedule_name": name,
        "cron": "0 2 * * *",
        "timezone": "UTC",
        "tool": "pgbackrest",
        "fingerprint": "0123456789ab",
        "defined_by": "host-a",
        "registered_at": NOW,
        "last_slot": None,
        "last_outcome": None,
        "last_reason": None,
        "last_detail": None,
        "last_backup_id": None,
        "last_job_state": None,
        "last_recorded_by": None,
        "conflicting_hosts": None,
        **values,
    }
    return ScheduleStatus(**row)


def test_each_schedule_shows_its_last_slot_outcome_and_next_fire_and_problems_are_spelled_out():
    nightly = Schedule("nightly", "0 2 * * *", "pgbackrest", {}, timezone="Europe/Paris")
    hourly = Schedule("hourly", "@hourly", "pgbackrest", {"backup_type": "incr"})
    shown = render(
        [nightly, hourly],
        [
            status(
                "nightly",
                last_slot=datetime(2026, 12, 1, 1, 0, tzinfo=UTC),
                last_outcome="enqueued",
                last_job_state="completed",
                conflicting_hosts="host-b (fedcba987654)",
            ),
            status(
                "hourly",
                last_slot=datetime(2026, 12, 2, 1, 0, tzinfo=UTC),
                last_outcome="skipped",
                last_reason="refused",
                last_detail="pggit: invalid p_branch_name: no branch named 'mian'",
            ),
            status("retired"),
        ],
        NOW,
    ).splitlines()

    assert shown[1].split() == [
        "nightly",
        "0",
        "2",
        "*",
        "*",
        "*",
        "Europe/Paris",
        "pgbackrest",
        "2026-12-01",
        "01:00",
        "enqueued",
        "(completed)",
        "2026-12-03",  # 02:00 Paris has passed at 02:30 Paris
        "01:00",
    ]
    assert shown[2].endswith("2026-12-02 02:00") and "skipped: refused" in shown[2]
    assert shown[3].startswith("retired") and shown[3].endswith("not in this config") and "no slot yet" in shown[3]
    assert shown[4] == (
        "error: schedule nightly: defined differently by host-b (fedcba987654) than by host-a (0123456789ab); "
        "no slot is recorded until they agree"
    )
    assert shown[5] == "error: schedule hourly: last slot refused: pggit: invalid p_branch_name: no branch named 'mian'"
