"""Drill schedules in the config (issue 11): a `schedules:` entry with `drill: {every, target}`
is a restore drill schedule, not a backup one; what each may and must carry; the slots every
host computes alike (drills.latest_slot)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from helpers.config_files import problems_in, write_config
from pggit_supervisor.config import load_config
from pggit_supervisor.drills import DrillSchedule, latest_slot

UTC = timezone.utc
DRILL = {"name": "weekly-drill", "drill": {"every": "7d", "target": {"tool": "pg_dump"}}, "max_drill_age": "8d"}


def config(tmp_path: Path, *schedules: dict[str, Any]) -> str:
    data = {"dsn": "postgresql://pggit_backup@db1/app", "tools": {"pg_dump": {}}, "schedules": list(schedules)}
    return write_config(tmp_path, data)


def test_a_drill_schedule_loads_beside_backup_schedules_and_is_not_one(tmp_path):
    nightly = {"name": "nightly", "cron": "@daily", "tool": "pg_dump"}
    loaded = load_config(config(tmp_path, DRILL, nightly), {}, check_paths=False)
    assert [s.name for s in loaded.schedules] == ["nightly"]
    assert loaded.drills == (DrillSchedule("weekly-drill", 7 * 86400, {"tool": "pg_dump"}, None, 8 * 86400, True),)
    app = loaded.for_database(loaded.served()[0])
    assert app.drills == loaded.drills


def test_what_a_drill_may_not_carry_and_what_a_backup_schedule_must(tmp_path):
    found = problems_in(config(tmp_path, {**DRILL, "cron": "@daily", "tool": "pg_dump"}, {"name": "bare"}))
    assert found == [
        "schedules[0].cron: schedule 'weekly-drill': a drill has no cron (allowed: drill: {every, target})",
        "schedules[0].tool: schedule 'weekly-drill': a drill has no tool (allowed: drill: {every, target})",
        "schedules[1].cron: schedule 'bare': required (unless it is a drill) "
        "(allowed: 5 cron fields (minute hour day month weekday) or @daily, @hourly)",
        "schedules[1].tool: schedule 'bare': required (unless it is a drill) (allowed: a built-in backup tool)",
    ]


def test_a_drill_names_a_period_of_whole_minutes_and_a_target_that_drills_run_on(tmp_path):
    bad = [
        {"name": "a", "drill": {"every": "10m", "target": {"tool": "pg_dump"}}},
        {"name": "b", "drill": {"every": "1d", "target": {"tool": "pgbackrest", "stanza": "main"}}},
        {"name": "c", "drill": {"every": "1d", "target": {"tool": "pg_dump", "stanza": "x"}, "when": 1}},
    ]
    found = problems_in(config(tmp_path, *bad))
    assert "schedules[0].drill.every: schedule 'a': must be a duration of whole minutes, got '10m'" in found[0]
    assert found[1].startswith("schedules[1].drill.target: schedule 'b': must be a pg_dump or pg_basebackup target")
    assert any(line.startswith("schedules[2].drill.target.stanza: schedule 'c'") for line in found)
    assert "schedules[2].drill.when: schedule 'c': unknown key (allowed: every, target)" in found


def test_slots_are_multiples_of_the_period_since_the_epoch_the_same_on_every_host():
    now = datetime(2026, 12, 2, 14, 37, 12, tzinfo=UTC)
    assert latest_slot(3600, now) == datetime(2026, 12, 2, 14, 0, tzinfo=UTC)
    assert latest_slot(86400, now) == datetime(2026, 12, 2, tzinfo=UTC)
    assert latest_slot(7 * 86400, now) == datetime(2026, 11, 26, tzinfo=UTC)  # epoch weeks start on Thursdays
