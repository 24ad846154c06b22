"""Retention evaluated in SQL (schema/015) on real backup rows: the keep rules, grandfather-
father-son, the floor, pins, unverified and failed backups that never count, the full a kept
pgBackRest incremental needs; expiry step 1 marks, records and re-checks, and planning changes
nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from helpers.db import query, scalar
from helpers.retention import make as make_at

UTC = timezone.utc
NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
DUMPS = {"tool": "pg_dump"}
WORKER, OPERATOR, READER = "pggit_backup_worker", "pggit_backup_operator", "pggit_backup_reader"


def make(db, age: timedelta, **kwargs) -> str:
    """A backup finished `age` before NOW (retention_helpers.make)."""
    return make_at(db, NOW - age, **kwargs)


def plan(db, rules: dict, target: dict = DUMPS) -> dict[str, tuple[bool, list[str]]]:
    rows = query(db, "SELECT * FROM pggit.retention_plan(%s, %s, %s)", (json.dumps(target), json.dumps(rules), NOW))
    return {row["backup_id"]: (row["keep"], row["reasons"]) for row in rows}


def kept(found: dict) -> set[str]:
    return {backup for backup, (keep, _) in found.items() if keep}


def test_keep_last_keeps_the_newest_n_verified_and_lets_the_rest_go(db):
    backups = [make(db, timedelta(days=day)) for day in range(6)]
    found = plan(db, {"keep_last": 3})
    assert kept(found) == set(backups[:3])
    assert found[backups[0]] == (True, ["newest verified", "keep_last"])
    assert found[backups[5]] == (False, [])


def test_keep_days_keeps_everything_younger(db):
    backups = [make(db, timedelta(days=day, hours=1)) for day in range(5)]
    assert kept(plan(db, {"keep_days": 2})) == set(backups[:2])


def test_grandfather_father_son_keeps_the_newest_of_each_day_week_and_month(db):
    # two backups a day for 70 days, NOW is Tuesday 2026-06-30
    backups = {age: make(db, timedelta(hours=age)) for age in range(0, 70 * 24, 12)}
    found = plan(db, {"keep_daily": 3, "keep_weekly": 2, "keep_monthly": 3})
    reasons = {age: found[backups[age]][1] for age in backups}

    daily = sorted(age for age, why in reasons.items() if "keep_daily" in why)
    assert daily == [0, 24, 48], "the newest of 06-30, 06-29 and 06-28 (12:00 each)"
    weekly = sorted(age for age, why in reasons.items() if "keep_weekly" in why)
    assert weekly == [0, 48], "the newest of this week (since Monday 06-29) and of last week (Sunday 06-28 12:00)"
    monthly = sorted(age for age, why in reasons.items() if "keep_monthly" in why)
    assert monthly == [0, 30 * 24, 61 * 24], "the newest of June, May (05-31 12:00) and April (04-30 12:00)"
    assert len(kept(found)) == len({*daily, *weekly, *monthly})


def test_unverified_and_failed_backups_never_count_and_go_after_the_grace_period(db):
    old_verified = make(db, timedelta(days=3))
    fresh_unverified = make(db, timedelta(hours=1), verified=False)
    old_unverified = make(db, timedelta(days=2), verified=False)
    old_failed = make(db, timedelta(days=2), status="failed", verified=False)
    older_verified = make(db, timedelta(days=4))

    found = plan(db, {"keep_last": 2, "grace_seconds": 86400})
    assert found[old_verified] == (True, ["newest verified", "keep_last"])
    assert found[older_verified] == (True, ["keep_last"]), "keep_last counts verified backups only"
    assert found[fresh_unverified] == (True, ["grace period (unverified, not counted)"])
    assert found[old_unverified] == (False, ["unverified, never counted"])
    assert found[old_failed] == (False, ["failed, never counted"])


def test_the_newest_verified_backup_is_kept_whatever_the_rules_say(db):
    backups = [make(db, timedelta(days=day + 10)) for day in range(3)]
    assert kept(plan(db, {})) == {backups[0]}


def test_the_min_verified_floor_holds_when_the_rules_keep_fewer(db):
    backups = [make(db, timedelta(days=day + 10)) for day in range(5)]
    found = plan(db, {"keep_days": 1, "min_verified": 3})
    assert kept(found) == set(backups[:3])
    assert [found[b][1] for b in backups[:3]] == [["newest verified"], ["min_verified"], ["min_verified"]]


def test_a_pinned_backup_is_kept_and_an_expired_one_cannot_be_pinned(db, login):
    backups = [make(db, timedelta(days=day)) for day in range(4)]
    operator = login(OPERATOR)
    assert scalar(operator, "SELECT pggit.pin_backup(%s, 'legal hold')", (backups[3],)) is True
    assert kept(plan(db, {"keep_last": 1})) == {backups[0], backups[3]}
    assert query(db, "SELECT reason, pinned_by FROM pggit.backup_pins")[0]["reason"] == "legal hold"

    worker = login(WORKER)
    query(
        worker,
        "SELECT * FROM pggit.expire_backups('host-a/1', %s, %s)",
        (json.dumps(DUMPS), json.dumps({"keep_last": 1})),
    )
    with pytest.raises(psycopg2.Error) as refused:
        scalar(operator, "SELECT pggit.pin_backup(%s, 'too late')", (backups[1],))
    assert refused.value.pgcode == "55000"
    assert scalar(operator, "SELECT pggit.unpin_backup(%s)", (backups[3],)) is True
    assert scalar(operator, "SELECT pggit.unpin_backup(%s)", (backups[3],)) is False


def test_a_kept_pgbackrest_incremental_keeps_the_full_it_is_based_on(db):
    stanza = {"tool": "pgbackrest", "stanza": "s1"}
    old_full = make(db, timedelta(days=8), backup_type="full", label="20260622-120000F")
    base = make(db, timedelta(days=2), backup_type="full", label="20260628-120000F")
    incr = make(db, timedelta(days=1), backup_type="incr", label="20260628-120000F_20260629-120000I")
    other_stanza = make(db, timedelta(days=9), backup_type="full", stanza="s2", label="20260621-120000F")

    found = plan(db, {"keep_last": 1}, stanza)
    assert found[incr] == (True, ["newest verified", "keep_last"])
    assert found[base] == (True, ["base of a kept incremental"])
    assert found[old_full] == (False, [])
    assert other_stanza not in found, "another stanza is another target"


def test_expiry_marks_what_the_plan_lets_go_records_it_and_planning_changes_nothing(db, login):
    backups = [make(db, timedelta(days=day)) for day in range(5)]
    worker = login(WORKER)
    before = query(db, "SELECT * FROM pggit.backups ORDER BY backup_id")
    plan(db, {"keep_last": 2})
    assert query(db, "SELECT count(*) AS n FROM pggit.backup_expirations")[0]["n"] == 0, "a plan writes nothing"

    rules = json.dumps({"keep_last": 2})
    expired = query(worker, "SELECT * FROM pggit.expire_backups('host-a/3', %s, %s)", (json.dumps(DUMPS), rules))
    assert {row["backup_id"] for row in expired} == set(backups[2:])
    recorded = query(
        db, "SELECT backup_id::text, expired_by, rule_set, target, removed_at FROM pggit.backup_expirations"
    )
    assert {row["expired_by"] for row in recorded} == {"host-a"}
    assert recorded[0]["rule_set"]["keep_last"] == 2 and recorded[0]["rule_set"]["min_verified"] == 1
    assert recorded[0]["target"]["database"] == scalar(db, "SELECT current_database()")
    assert query(db, "SELECT * FROM pggit.backups ORDER BY backup_id") == before, "no backup row changes or goes"
    assert query(worker, "SELECT * FROM pggit.expire_backups('host-b/1', %s, %s)", (json.dumps(DUMPS), rules)) == []
    again = plan(db, {"keep_last": 2})
    assert {b for b, (_, why) in again.items() if why == ["expired"]} == set(backups[2:])
    assert kept(again) == set(backups[:2]), "expired backups do not count: the same two stay"


def test_rights_readers_plan_operators_pin_workers_expire(db, login):
    backup = make(db, timedelta(days=1))
    reader = login(READER)
    assert query(reader, "SELECT keep FROM pggit.retention_plan(%s, '{}')", (json.dumps(DUMPS),)) == [{"keep": True}]
    for statement, args in (
        ("SELECT pggit.pin_backup(%s, 'x')", (backup,)),
        ("SELECT * FROM pggit.expire_backups('h/1', %s, '{}')", (json.dumps(DUMPS),)),
    ):
        with pytest.raises(psycopg2.Error) as refused:
            query(reader, statement, args)
        assert refused.value.pgcode == "42501"


@pytest.mark.parametrize(
    "target, rules, column",
    [
        ({"tool": "custom"}, {}, "p_target.tool"),
        ({"tool": "pgbackrest"}, {}, "p_target.stanza"),
        ({"tool": "pgbackrest", "stanza": "a b"}, {}, "p_target.stanza"),
        ({"tool": "pg_dump", "database": "elsewhere"}, {}, "p_target.database"),
        ({"tool": "pg_dump", "stanza": "x"}, {}, "p_target.stanza"),
        (DUMPS, {"keep_last": -1}, "p_rules.keep_last"),
        (DUMPS, {"min_verified": 0}, "p_rules.min_verified"),
        (DUMPS, {"keep_forever": 1}, "p_rules"),
    ],
)
def test_bad_targets_and_rules_are_refused_naming_the_field(db, login, target, rules, column):
    make(db, timedelta(days=1))
    worker = login(WORKER)
    with pytest.raises(psycopg2.Error) as refused:
        query(worker, "SELECT * FROM pggit.expire_backups('h/1', %s, %s)", (json.dumps(target), json.dumps(rules)))
    assert refused.value.pgcode == "22023" and refused.value.diag.column_name.startswith(column)
    assert scalar(db, "SELECT count(*) FROM pggit.backup_expirations") == 0
