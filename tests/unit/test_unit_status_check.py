"""status_check: every verdict of the probe over frozen snapshots, no database. What matters most:
nothing that did not happen is OK (never backed up is CRITICAL, a missing age is `U` in the
perfdata, never 0), an unreadable database is UNKNOWN, and CRITICAL is never hidden."""

from __future__ import annotations

import re

import pytest

from pggit_supervisor.retention import Retention
from pggit_supervisor.scheduler import Schedule
from pggit_supervisor.status_check import (
    BACKUP,
    CRITICAL,
    DRILL,
    OK,
    UNKNOWN,
    WAL,
    WARNING,
    WORKERS,
    Age,
    DatabaseSnapshot,
    evaluate,
    human,
)
from pggit_supervisor.status_targets import watched_targets

HOUR = 3600.0
# label=value[UOM];warn;crit;min[;max], value a number or U
PERF = re.compile(r"^[A-Za-z0-9_.:/-]+=(U|[0-9.]+)(s|%|B)?;[0-9.]*;[0-9.]*;[0-9.]*(;[0-9.]*)?$")


def db(*ages: Age, name: str = "mydb", failures: int = 0, workers_seen: float | None = 10.0) -> DatabaseSnapshot:
    return DatabaseSnapshot(
        name,
        ages=(*ages, Age(WORKERS, name, workers_seen, 120.0)),
        unacknowledged_failures=failures,
        ready=1,
        oldest_ready_seconds=5.0,
    )


def backup(seconds: float | None, limit: float | None = 24 * HOUR, label: str = "pg_dump:mydb") -> Age:
    return Age(BACKUP, label, seconds, limit)


def test_fresh_backups_and_live_workers_are_ok_with_perfdata():
    verdict = evaluate([db(backup(2 * HOUR))], 0.8)

    assert verdict.code == OK and verdict.line().startswith("PGGIT OK - 1 target(s) backed up within their limits")
    assert "mydb_backup_pg_dump:mydb_age=7200s;69120;86400;0" in verdict.perfdata
    assert all(PERF.match(item) for item in verdict.perfdata), verdict.perfdata
    assert verdict.line().count("|") == 1 and "\n" not in verdict.line()


def test_a_backup_older_than_its_max_age_is_critical():
    verdict = evaluate([db(backup(25 * HOUR))], 0.8)
    assert verdict.code == CRITICAL
    assert "pg_dump:mydb: newest verified backup is 1d 1h old (max_age 1d)" in verdict.summary


def test_a_backup_past_the_warning_fraction_of_its_max_age_is_a_warning():
    verdict = evaluate([db(backup(20 * HOUR))], 0.8)
    assert verdict.code == WARNING and "83% of max_age 1d" in verdict.summary
    assert evaluate([db(backup(20 * HOUR))], 0.9).code == OK, "the fraction is the setting's"


@pytest.mark.parametrize("limit", [24 * HOUR, None])
def test_a_target_never_backed_up_is_critical_and_its_age_is_undetermined_not_zero(limit):
    verdict = evaluate([db(backup(None, limit))], 0.8)

    assert verdict.code == CRITICAL and "never backed up" in verdict.summary
    (age,) = [p for p in verdict.perfdata if "_backup_" in p]
    assert age.split("=")[1].startswith("U;"), age


def test_a_target_without_max_age_is_only_checked_for_having_a_backup():
    assert evaluate([db(backup(400 * HOUR, None))], 0.8).code == OK


def test_unacknowledged_permanent_failures_are_critical():
    verdict = evaluate([db(backup(HOUR), failures=2)], 0.8)
    assert verdict.code == CRITICAL and "2 unacknowledged permanent failure(s)" in verdict.summary
    assert "mydb_unacknowledged_failures=2;;0;0" in verdict.perfdata


def test_no_worker_seen_for_worker_silence_is_critical_and_none_ever_seen_too():
    silent = evaluate([db(backup(HOUR), workers_seen=121.0)], 0.8)
    assert silent.code == CRITICAL and "newest worker record is 2m 1s old (worker_silence 2m)" in silent.summary
    assert evaluate([db(backup(HOUR), workers_seen=100.0)], 0.8).code == WARNING
    never = evaluate([db(backup(HOUR), workers_seen=None)], 0.8)
    assert never.code == CRITICAL and "no worker ever seen" in never.summary


def test_an_unreadable_database_is_unknown_never_ok():
    verdict = evaluate([DatabaseSnapshot("mydb", error="connection refused")], 0.8)
    assert verdict.code == UNKNOWN and "database mydb: cannot be read: connection refused" in verdict.summary


def test_critical_wins_over_unknown_and_unknown_over_warning():
    down = DatabaseSnapshot("other", error="timeout")
    assert evaluate([down, db(backup(30 * HOUR))], 0.8).code == CRITICAL
    assert evaluate([down, db(backup(20 * HOUR))], 0.8).code == UNKNOWN
    assert evaluate([down, db(backup(30 * HOUR))], 0.8).summary.startswith("pg_dump:mydb"), "worst first"


def test_a_database_with_nothing_to_measure_is_unknown_and_no_database_too():
    assert evaluate([db()], 0.8).code == UNKNOWN
    assert evaluate([], 0.8).code == UNKNOWN


def test_a_wal_archive_behind_or_never_read_and_a_drill_never_passed_are_judged_like_backups():
    wal = Age(WAL, "pgbackrest:main", 7200.0, 3600.0)
    verdict = evaluate([db(backup(HOUR), wal)], 0.8)
    assert verdict.code == CRITICAL
    assert "pgbackrest:main: oldest unarchived WAL is 2h old (max_wal_age 1h)" in verdict.summary
    unread = evaluate([db(backup(HOUR), Age(WAL, "barman:pg", None, 3600.0))], 0.8)
    assert unread.code == CRITICAL and "barman:pg: no reading of its WAL archive yet" in unread.summary
    drill = evaluate([db(backup(HOUR), Age(DRILL, "weekly-drill", 6 * 86400.0, 7 * 86400.0))], 0.8)
    assert (
        drill.code == WARNING and "weekly-drill: last passed drill is 6d old, 86% of max_drill_age 7d" in drill.summary
    )
    never = evaluate([db(backup(HOUR), Age(DRILL, "weekly-drill", None, 7 * 86400.0))], 0.8)
    assert never.code == CRITICAL and "weekly-drill: no restore drill ever passed" in never.summary


def test_a_kind_of_age_not_declared_is_judged_with_generic_words():
    verdict = evaluate([db(backup(HOUR), Age("other", "x", 7200.0, 3600.0))], 0.8)
    assert verdict.code == CRITICAL and "x: newest other is 2h old" in verdict.summary


def test_the_summary_stays_one_line_without_a_pipe():
    verdict = evaluate([DatabaseSnapshot("mydb", error="bad | thing\nsecond line")], 0.8)
    assert "\n" not in verdict.line() and verdict.line().count("|") == 0


def test_human_ages_show_the_two_largest_units():
    seconds = (0, 59, 61, 3 * 3600 + 120, 86400 * 3 + 3600 * 4 + 5, 7214, 86400)
    assert [human(s) for s in seconds] == ["0s", "59s", "1m 1s", "3h 2m", "3d 4h", "2h", "1d"]


def test_a_schedule_and_a_retention_entry_of_one_target_are_one_target_with_the_strictest_max_age():
    schedules = (
        Schedule("nightly", "0 1 * * *", "pg_dump", {}, max_age=2 * 86400),
        Schedule("hourly", "0 * * * *", "pg_dump", {}, max_age=7200),
        Schedule("stanza", "0 2 * * *", "pgbackrest", {"stanza": "main", "backup_type": "full"}),
        Schedule("no-server", "0 3 * * *", "barman", {}),
    )
    retention = (Retention({"tool": "pg_dump", "database": "mydb"}), Retention({"tool": "barman", "server": "pg"}))

    found = watched_targets(schedules, retention, "mydb")
    assert [(t.label, t.schedules, t.max_age) for t in found] == [
        ("pg_dump:mydb", ("nightly", "hourly"), 7200),
        ("pgbackrest:main", ("stanza",), None),
        ("barman:pg", (), None),
    ]
    assert found[0].target == {"tool": "pg_dump"}, "the database fills in its own name"
