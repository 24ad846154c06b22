"""Attacks on expiry step 2 and pruning (schema/016) through the rows other logins can write: a
worker that records another backup's location (or a directory holding it) on its own backup must
not get the other backup's data removed when its own expires; `pgbackrest expire --set` of a full
takes its dependants with it, so a full is not removed while a dependant that is not expired
(pinned, unverified) still needs it; and pruning keeps the job that says which target a backup
belongs to, or retention loses track of it (never expired, its pin locked on nothing)."""

from __future__ import annotations

import json
from datetime import timedelta

from helpers.db import query, scalar
from helpers.queue import claim, force
from helpers.retention import make

WORKER = "pggit_backup_worker"
DUMPS = json.dumps({"tool": "pg_dump"})
S1 = json.dumps({"tool": "pgbackrest", "stanza": "s1"})


def now(db):
    return scalar(db, "SELECT now()")


def pending(conn, target: str) -> dict[str, str | None]:
    rows = query(conn, "SELECT backup_id::text, held FROM pggit.pending_backup_removals(%s)", (target,))
    return {row["backup_id"]: row["held"] for row in rows}


def forged_dump(db, worker, location: str, days_ago: int) -> str:
    """A pg_dump backup a hostile worker finishes, unverified, recording `location`."""
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main')")
    held = claim(worker, "host-x/1", ["pg_dump"])
    assert held["backup_id"] == backup_id
    forged = json.dumps({"verified": False, "location": location})
    assert scalar(
        worker, "SELECT pggit.finish_backup_job(%s, %s, 'done', %s)", (held["job_id"], held["claim_token"], forged)
    )
    when = now(db) - timedelta(days=days_ago)
    force(db, "UPDATE pggit.backup_jobs SET completed_at = %s WHERE backup_id = %s", (when, backup_id))
    force(
        db,
        "UPDATE pggit.backups SET created_at = %s, completed_at = %s WHERE backup_id = %s",
        (when - timedelta(minutes=5), when, backup_id),
    )
    return backup_id


def test_a_forged_location_naming_a_kept_backup_or_its_directory_is_held_not_removed(db, login):
    worker = login(WORKER)
    kept = make(db, now(db) - timedelta(days=1))
    path = "/var/backups/pggit/daily/pg_dump-main-nocommit-20260101T000000Z-abcdef12.dump"
    force(db, "UPDATE pggit.backups SET location = %s WHERE backup_id = %s", ("file://" + path, kept))
    same = forged_dump(db, worker, "file://" + path, 5)
    parent = forged_dump(db, worker, "file:///var/backups/pggit/daily", 6)
    inside = forged_dump(db, worker, "file://" + path + "/toc.dat", 7)
    mine = forged_dump(db, worker, "file:///var/backups/pggit/daily/pg_dump-mine.dump", 8)
    expired = query(
        worker, "SELECT backup_id::text FROM pggit.expire_backups('host-x/1', %s, '{\"keep_last\": 1}')", (DUMPS,)
    )
    assert {row["backup_id"] for row in expired} == {same, parent, inside, mine}

    found = pending(worker, DUMPS)
    assert set(found) == {same, parent, inside, mine}
    assert found[mine] is None, "a location of its own is removed"
    for forged in (same, parent, inside):
        assert found[forged] is not None and kept in found[forged], f"{forged} shares {kept}'s data"


def test_a_duplicated_pgbackrest_or_barman_location_is_held(db):
    kept = make(db, now(db) - timedelta(days=1), backup_type="full", label="20260107-000000F")
    copy = make(db, now(db) - timedelta(days=4), backup_type="full", label="20260105-000000F", verified=False)
    force(db, "UPDATE pggit.backups SET location = 'pgbackrest://s1/20260107-000000F' WHERE backup_id = %s", (copy,))
    assert {
        row["backup_id"]
        for row in query(db, "SELECT backup_id::text FROM pggit.expire_backups('h/1', %s, '{}')", (S1,))
    } == {copy}
    found = pending(db, S1)
    assert found[copy] is not None and kept in found[copy]


def test_a_full_is_not_removed_while_a_dependant_that_is_not_expired_needs_it(db, login):
    """The pinned incremental is not verified, so it counts for nothing and does not keep its
    full; `pgbackrest expire --set=FULL` would still take the pinned incremental with it."""
    full = make(db, now(db) - timedelta(days=5), backup_type="full", label="20260101-000000F")
    incr = make(
        db, now(db) - timedelta(days=4), backup_type="incr", label="20260101-000000F_20260102-000000I", verified=False
    )
    make(db, now(db) - timedelta(days=1), backup_type="full", label="20260107-000000F")
    assert scalar(login("pggit_backup_operator"), "SELECT pggit.pin_backup(%s, 'audit')", (incr,))
    expired = query(db, "SELECT backup_id::text FROM pggit.expire_backups('h/1', %s, '{\"keep_last\": 1}')", (S1,))
    assert {row["backup_id"] for row in expired} == {full}
    found = pending(db, S1)
    assert found[full] is not None and incr in found[full]

    # once the dependant is expired too, both go
    force(db, "DELETE FROM pggit.backup_pins WHERE backup_id = %s", (incr,))
    expired = query(db, "SELECT backup_id::text FROM pggit.expire_backups('h/1', %s, '{\"keep_last\": 1}')", (S1,))
    assert {row["backup_id"] for row in expired} == {incr}
    assert pending(db, S1) == {full: None, incr: None}


def test_pruning_keeps_the_job_that_places_a_backup_in_its_target_until_its_data_is_removed(db, login):
    worker = login(WORKER)
    old = make(db, now(db) - timedelta(days=30))
    new = make(db, now(db) - timedelta(days=20))
    force(db, "UPDATE pggit.backup_jobs SET updated_at = completed_at WHERE backup_id IN (%s, %s)", (old, new))
    assert scalar(worker, "SELECT pggit.prune_backup_jobs(3600)") == 0, "both backups are still retention's"
    plan = query(worker, "SELECT backup_id::text FROM pggit.retention_plan(%s, '{\"keep_last\": 1}')", (DUMPS,))
    assert {row["backup_id"] for row in plan} == {old, new}

    expired = query(
        worker, "SELECT backup_id::text FROM pggit.expire_backups('h/1', %s, '{\"keep_last\": 1}')", (DUMPS,)
    )
    assert [row["backup_id"] for row in expired] == [old]
    assert scalar(worker, "SELECT pggit.prune_backup_jobs(3600)") == 0, "old's data is not removed yet"
    assert scalar(worker, "SELECT pggit.record_backup_removal('h/1', %s, NULL)", (old,)) == "removed"
    assert scalar(worker, "SELECT pggit.prune_backup_jobs(3600)") == 1
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE backup_id = %s", (new,)) == 1
    assert scalar(db, "SELECT count(*) FROM pggit.backups WHERE backup_id IN (%s, %s)", (old, new)) == 2


def test_a_backup_expired_under_rules_that_keep_less_than_the_removers_is_held(db, login):
    """Any worker may call expire_backups with rules of its own: keep_last 0 lets all but the
    newest verified go. The host that removes, keeping 3, does not remove on that word."""
    worker = login(WORKER)
    days = (9, 7, 5, 3, 1)
    ids = [make(db, now(db) - timedelta(days=day)) for day in days]
    for day, backup_id in zip(days, ids, strict=True):
        path = f"file:///var/backups/pggit/pg_dump-main-{day}.dump"
        force(db, "UPDATE pggit.backups SET location = %s WHERE backup_id = %s", (path, backup_id))
    expired = query(worker, "SELECT backup_id::text FROM pggit.expire_backups('evil/1', %s, '{}')", (DUMPS,))
    assert {row["backup_id"] for row in expired} == set(ids[:4])

    mine = json.dumps({"keep_last": 3})
    rows = query(worker, "SELECT backup_id::text, held FROM pggit.pending_backup_removals(%s, %s)", (DUMPS, mine))
    found = {row["backup_id"]: row["held"] for row in rows}
    assert set(found) == set(ids[:4])
    for backup_id in ids[:4]:
        assert "evil" in found[backup_id] and "keep_last 0 < 3" in found[backup_id], found[backup_id]
    stricter = query(
        worker,
        "SELECT held FROM pggit.pending_backup_removals(%s, %s)",
        (DUMPS, json.dumps({"keep_last": 0, "min_verified": 1})),
    )
    assert [row["held"] for row in stricter] == [None] * 4, "rules at least as strict: removed"
