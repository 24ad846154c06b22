"""Schedules decided in the database (schema/014): a slot is recorded once whoever asks, overlap
and supersession are decided under the schedule's lock, a differing definition on another live
host blocks the schedule and names that host, and the recording function trusts nothing it is
given (workers call it; a worker login may be hostile)."""

from __future__ import annotations

import json
import multiprocessing
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from helpers.db import query, scalar
from helpers.queue import claim

WORKER = "pggit_backup_worker"
OPERATOR = "pggit_backup_operator"
READER = "pggit_backup_reader"
UTC = timezone.utc
T0 = datetime(2026, 1, 5, 2, 0, tzinfo=UTC)
FULL = {"cron": "0 2 * * *", "timezone": "UTC", "tool": "pgbackrest", "args": {"backup_type": "full", "stanza": "s1"}}
DUMP = {"cron": "*/5 * * * *", "timezone": "UTC", "tool": "pg_dump", "args": {"output_path": "/backups"}}
QUEUED = {**DUMP, "overlap": "queue"}


def touch(conn, host, name, definition, now=T0 - timedelta(days=1)):
    return query(
        conn, "SELECT * FROM pggit.touch_backup_schedule(%s, %s, %s, %s)", (host, name, json.dumps(definition), now)
    )[0]


def record(conn, host, name, slot, definition, decision="enqueue"):
    return query(
        conn,
        "SELECT * FROM pggit.record_backup_schedule_slot(%s, %s, %s, %s, %s)",
        (host, name, slot, json.dumps(definition), decision),
    )[0]


def slots(conn, name):
    return query(
        conn,
        "SELECT slot_time, outcome, reason, backup_id, recorded_by FROM pggit.backup_schedule_slots "
        "WHERE schedule_name = %s ORDER BY slot_time",
        (name,),
    )


def _record_many(dsn, user, host, definition, times, barrier, out):
    conn = psycopg2.connect(dsn, user=user)
    conn.autocommit = True
    barrier.wait()
    fresh = []
    for slot in times:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT fresh, backup_id::text FROM pggit.record_backup_schedule_slot(%s, %s, %s, %s, 'enqueue')",
                (f"{host}/1", "dumps", slot, json.dumps(definition)),
            )
            row = cur.fetchone()
        if row[0]:
            fresh.append((slot.isoformat(), row[1]))
    out.put((host, fresh))
    conn.close()


def test_three_hosts_recording_the_same_slots_at_once_make_exactly_one_job_per_slot(db, login_as, dsn):
    logins = [login_as(WORKER) for _ in range(3)]
    for index, (conn, _) in enumerate(logins):
        touch(conn, f"host-{index}/1", "dumps", QUEUED)  # each host is spoken for by its own login
    times = [T0 + timedelta(minutes=5 * i) for i in range(12)]
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    workers = [
        ctx.Process(target=_record_many, args=(dsn, name, f"host-{i}", QUEUED, times, barrier, out))
        for i, (_, name) in enumerate(logins)
    ]
    for process in workers:
        process.start()
    results = [out.get(timeout=60) for _ in workers]
    for process in workers:
        process.join(30)
        assert process.exitcode == 0

    fresh = [entry for _, found in results for entry in found]
    assert sorted(slot for slot, _ in fresh) == sorted(t.isoformat() for t in times), "each slot decided once"
    recorded = slots(db, "dumps")
    assert [r["outcome"] for r in recorded] == ["enqueued"] * 12
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE tool = 'pg_dump'") == 12
    assert {str(r["backup_id"]) for r in recorded} == {backup for _, backup in fresh}


def test_a_second_caller_gets_the_first_decision_back_and_no_second_job(db, login):
    worker = login(WORKER)
    touch(worker, "a/1", "nightly", FULL)
    first = record(worker, "a/1", "nightly", T0, FULL)
    again = record(worker, "b/2", "nightly", T0, FULL)

    assert first["fresh"] and first["outcome"] == "enqueued" and first["recorded_by"] == "a"
    assert not again["fresh"] and again["backup_id"] == first["backup_id"] and again["recorded_by"] == "a"
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs") == 1
    status = query(db, "SELECT * FROM pggit.backup_schedule_status")[0]
    assert (status["last_slot"], status["last_outcome"], status["last_job_state"]) == (T0, "enqueued", "ready")


def test_overlap_skip_records_the_slot_skipped_while_the_previous_run_is_queued_or_running(db, login):
    worker = login(WORKER)
    touch(worker, "a/1", "nightly", FULL)
    record(worker, "a/1", "nightly", T0, FULL)
    second = record(worker, "a/1", "nightly", T0 + timedelta(days=1), FULL)
    assert (second["outcome"], second["reason"]) == ("skipped", "overlap")

    job = claim(db, "a/1", ["pgbackrest"])
    assert job is not None
    third = record(worker, "a/1", "nightly", T0 + timedelta(days=2), FULL)
    assert (third["outcome"], third["reason"]) == ("skipped", "overlap"), "running counts as still running"
    db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (job["job_id"],))
    fourth = record(worker, "a/1", "nightly", T0 + timedelta(days=3), FULL)
    assert fourth["outcome"] == "enqueued"


def test_overlap_queue_enqueues_behind_the_previous_run(db, login):
    worker = login(WORKER)
    touch(worker, "a/1", "dumps", QUEUED)
    assert record(worker, "a/1", "dumps", T0, QUEUED)["outcome"] == "enqueued"
    assert record(worker, "a/1", "dumps", T0 + timedelta(minutes=5), QUEUED)["outcome"] == "enqueued"
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE status = 'queued'") == 2


def test_a_pending_full_supersedes_queued_incrementals_of_its_stanza_both_ways(db, login):
    worker = login(WORKER)
    incr = {**FULL, "cron": "0 * * * *", "args": {"backup_type": "incr", "stanza": "s1"}, "overlap": "queue"}
    other = {**incr, "args": {"backup_type": "incr", "stanza": "s2"}}
    touch(worker, "a/1", "hourly", incr)
    touch(worker, "a/1", "hourly-s2", other)
    touch(worker, "a/1", "nightly", FULL)
    early = record(worker, "a/1", "hourly", T0 - timedelta(hours=1), incr)
    untouched = record(worker, "a/1", "hourly-s2", T0 - timedelta(hours=1), other)
    full = record(worker, "a/1", "nightly", T0, FULL)
    late = record(worker, "a/1", "hourly", T0, incr)

    assert full["outcome"] == "enqueued"
    assert (late["outcome"], late["reason"]) == ("skipped", "superseded") and "full backup of stanza s1" in late[
        "detail"
    ]
    superseded = slots(db, "hourly")[0]
    assert (superseded["outcome"], superseded["reason"], superseded["backup_id"]) == (
        "skipped",
        "superseded",
        early["backup_id"],
    )
    states = {
        r["backup_id"]: r["job_state"]
        for r in query(db, "SELECT backup_id::text, job_state FROM pggit.backup_job_queue")
    }
    assert states == {early["backup_id"]: "cancelled", untouched["backup_id"]: "ready", full["backup_id"]: "ready"}


def decided(answer) -> bool:
    """The slot was decided just now by this call (enqueued, or skipped for overlap: either way
    recorded, not refused for a conflict)."""
    return answer["outcome"] is not None and answer["fresh"] and answer["conflict_host"] is None


def test_a_differing_definition_names_both_hosts_and_the_established_one_keeps_recording(db, login):
    worker = login(WORKER)
    touch(worker, "host-a/1", "nightly", FULL)
    other = {**FULL, "cron": "0 3 * * *"}
    state = touch(worker, "host-b/1", "nightly", other)
    assert state["conflict_host"] == "host-a" and state["blocked"]

    refused = record(worker, "host-b/1", "nightly", T0, other)
    assert refused["outcome"] is None and refused["conflict_host"] == "host-a" and not refused["fresh"]
    # host-a holds the definition the schedule was established with: told of host-b, it goes on
    ours = touch(worker, "host-a/1", "nightly", FULL)
    assert ours["conflict_host"] == "host-b" and not ours["blocked"]
    assert record(worker, "host-a/1", "nightly", T0, FULL)["outcome"] == "enqueued"
    assert [slot["recorded_by"] for slot in slots(db, "nightly")] == ["host-a"]
    status = query(db, "SELECT conflicting_hosts FROM pggit.backup_schedule_status")[0]
    assert status["conflicting_hosts"].startswith("host-b (")

    # host-b was updated to the same definition: no conflict is left
    assert touch(worker, "host-b/1", "nightly", FULL)["conflict_host"] is None
    assert decided(record(worker, "host-b/1", "nightly", T0 + timedelta(days=1), FULL))
    assert query(db, "SELECT conflicting_hosts FROM pggit.backup_schedule_status")[0]["conflicting_hosts"] is None


def test_a_rolling_change_of_definition_never_stops_the_schedule(db, login):
    """Hosts updated one by one: the old definition records until the last host holding it is
    updated, then the new one takes over; at no time does a slot go unrecorded."""
    worker = login(WORKER)
    new = {**FULL, "cron": "30 2 * * *"}
    for host in ("h1/1", "h2/1", "h3/1"):
        touch(worker, host, "nightly", FULL)
    assert record(worker, "h1/1", "nightly", T0, FULL)["outcome"] == "enqueued"

    touch(worker, "h1/1", "nightly", new)  # the first host is updated
    assert touch(worker, "h1/1", "nightly", new)["blocked"]
    assert not touch(worker, "h2/1", "nightly", FULL)["blocked"]
    assert decided(record(worker, "h2/1", "nightly", T0 + timedelta(days=1), FULL))

    touch(worker, "h2/1", "nightly", new)  # the second: h3 still holds the established definition
    assert touch(worker, "h2/1", "nightly", new)["blocked"]
    assert decided(record(worker, "h3/1", "nightly", T0 + timedelta(days=2), FULL))

    touch(worker, "h3/1", "nightly", new)  # the last: the new definition takes over
    assert not touch(worker, "h1/1", "nightly", new)["blocked"]
    assert decided(record(worker, "h1/1", "nightly", T0 + timedelta(days=3, minutes=30), new))
    assert scalar(db, "SELECT definition ->> 'cron' FROM pggit.backup_schedules") == "30 2 * * *"
    assert len(slots(db, "nightly")) == 4


def test_when_no_live_host_holds_the_established_definition_two_new_ones_block_each_other(db, login):
    worker = login(WORKER)
    touch(worker, "old/1", "nightly", FULL)
    db.cursor().execute("UPDATE pggit.backup_schedule_hosts SET seen_at = now() - interval '1 hour'")
    left, right = {**FULL, "cron": "0 3 * * *"}, {**FULL, "cron": "0 4 * * *"}
    touch(worker, "host-l/1", "nightly", left)
    touch(worker, "host-r/1", "nightly", right)
    assert record(worker, "host-l/1", "nightly", T0 + timedelta(hours=1), left)["conflict_host"] == "host-r"
    assert record(worker, "host-r/1", "nightly", T0 + timedelta(hours=2), right)["conflict_host"] == "host-l"
    assert slots(db, "nightly") == []


def test_a_host_not_seen_for_a_while_no_longer_blocks(db, login):
    worker = login(WORKER)
    touch(worker, "gone/1", "nightly", FULL)
    db.cursor().execute(
        "UPDATE pggit.backup_schedule_hosts SET seen_at = now() - interval '1 hour' WHERE host = 'gone'"
    )
    other = {**FULL, "cron": "0 3 * * *"}
    assert touch(worker, "host-b/1", "nightly", other)["conflict_host"] is None
    assert record(worker, "host-b/1", "nightly", T0 + timedelta(hours=1), other)["outcome"] == "enqueued"


def test_missed_and_disabled_are_recorded_without_a_job_and_refused_args_say_why(db, login):
    worker = login(WORKER)
    touch(worker, "a/1", "nightly", FULL)
    assert record(worker, "a/1", "nightly", T0, FULL, "missed")["reason"] == "missed"
    off = {**FULL, "enabled": False}
    assert record(worker, "a/1", "nightly", T0 + timedelta(days=1), off)["reason"] == "disabled"
    bad = {**FULL, "args": {"backup_type": "weekly", "stanza": "s1"}}
    refused = record(worker, "a/1", "nightly", T0 + timedelta(days=2), bad)
    assert refused["reason"] == "refused" and "p_backup_type" in refused["detail"]
    unknown = {**FULL, "args": {"stanza": "s1", "server_name": "x"}}
    refused = record(worker, "a/1", "nightly", T0 + timedelta(days=3), unknown)
    assert refused["reason"] == "refused" and "args.server_name" in refused["detail"]
    assert scalar(db, "SELECT count(*) FROM pggit.backups") == 0


@pytest.mark.parametrize(
    "slot, definition, decision, message",
    [
        (T0 + timedelta(seconds=30), FULL, "enqueue", "p_slot_time"),
        (datetime.now(UTC) + timedelta(days=2), FULL, "enqueue", "p_slot_time"),
        (None, FULL, "enqueue", "p_slot_time"),
        (T0, {**FULL, "command": "rm -rf /"}, "enqueue", "unknown keys command"),
        (T0, {**FULL, "tool": "custom"}, "enqueue", "p_definition.tool"),
        (T0, {**FULL, "args": "full"}, "enqueue", "p_definition.args"),
        (T0, FULL, "run", "p_decision"),
    ],
)
def test_the_recording_function_refuses_bad_input_and_writes_nothing(db, login, slot, definition, decision, message):
    worker = login(WORKER)
    touch(worker, "a/1", "nightly", FULL)
    with pytest.raises(psycopg2.Error) as raised:
        record(worker, "a/1", "nightly", slot, definition, decision)
    assert raised.value.pgcode == "22023" and message in raised.value.diag.message_primary
    assert slots(db, "nightly") == [] and scalar(db, "SELECT count(*) FROM pggit.backups") == 0


def test_only_workers_may_record_slots_and_readers_see_the_view_not_the_definitions(db, login):
    operator, reader = login(OPERATOR), login(READER)
    for conn in (operator, reader):
        with pytest.raises(psycopg2.Error) as raised:
            touch(conn, "a/1", "nightly", FULL)
        assert raised.value.pgcode == "42501"
    worker = login(WORKER)
    touch(worker, "a/1", "nightly", {**FULL, "args": {**FULL["args"], "options": {"webhook_url": "https://x/secret"}}})
    assert scalar(reader, "SELECT count(*) FROM pggit.backup_schedule_status") == 1
    with pytest.raises(psycopg2.Error) as raised:
        query(reader, "SELECT definition FROM pggit.backup_schedules")
    assert raised.value.pgcode == "42501"


def test_a_new_schedule_counts_from_its_registration_which_is_never_in_the_future(db, login):
    worker = login(WORKER)
    state = touch(worker, "a/1", "nightly", FULL, now=datetime(2999, 1, 1, tzinfo=UTC))
    assert state["registered_at"] <= scalar(db, "SELECT now()") and state["last_slot"] is None
    record(worker, "a/1", "nightly", T0, FULL)
    assert touch(worker, "a/1", "nightly", FULL)["last_slot"] == T0
