"""The scheduler against a real database with its clock in the test's hand (no sleeping for
cron): several schedulers at once make one job per slot, downtime is caught up per policy with
the passed-over slots recorded, a DST change fires each slot once, a differing definition on
another host is logged naming both hosts."""

from __future__ import annotations

import logging
import multiprocessing
from datetime import datetime, timedelta, timezone

import psycopg2

from helpers.db import query, scalar
from pggit_supervisor.queue import Queue
from pggit_supervisor.scheduler import Schedule, Scheduler

UTC = timezone.utc
T0 = datetime(2025, 6, 2, 0, 0, 20, tzinfo=UTC)
WORKER = "pggit_backup_worker"


def dumps(cron: str = "*/10 * * * *", **settings) -> Schedule:
    values = {"overlap": "queue", "catch_up": "latest", **settings}
    return Schedule(name="dumps", cron=cron, tool="pg_dump", args={"output_path": "/backups"}, **values)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def scheduler(schedule: Schedule, host: str, clock: Clock) -> Scheduler:
    return Scheduler((schedule,), f"{host}/1", 30.0, clock=clock)


def recorded(db):
    return query(
        db,
        "SELECT slot_time, outcome, reason, recorded_by, backup_id FROM pggit.backup_schedule_slots ORDER BY slot_time",
    )


def _run_host(dsn, user, host, times, barrier, out):
    conn = psycopg2.connect(dsn, user=user)
    conn.autocommit = True
    clock = Clock(times[0])
    sched = scheduler(dumps(), host, clock)
    fresh = 0
    for now in times:
        clock.now = now
        barrier.wait()  # every host ticks at the same instant
        fresh += sum(1 for r in sched.tick(Queue(conn)) if r.record is not None and r.record.fresh)
    out.put((host, fresh))
    conn.close()


def test_three_schedulers_ticking_at_once_record_each_slot_once_with_one_job(db, login_as, dsn):
    users = [login_as(WORKER)[1] for _ in range(3)]
    Scheduler((dumps(),), "seed/1", 30.0, clock=Clock(T0)).tick(Queue(db))  # registers at T0, no slot yet
    times = [T0 + timedelta(minutes=minute) for minute in range(0, 121, 5)]
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    hosts = [
        ctx.Process(target=_run_host, args=(dsn, user, f"h{i}", times, barrier, out)) for i, user in enumerate(users)
    ]
    for process in hosts:
        process.start()
    fresh = dict(out.get(timeout=120) for _ in hosts)
    for process in hosts:
        process.join(30)
        assert process.exitcode == 0

    rows = recorded(db)
    assert [r["slot_time"] for r in rows] == [T0.replace(second=0) + timedelta(minutes=10 * i) for i in range(1, 13)]
    assert {r["outcome"] for r in rows} == {"enqueued"}
    assert sum(fresh.values()) == 12, f"each slot decided by exactly one host: {fresh}"
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs WHERE tool = 'pg_dump'") == 12
    assert scalar(db, "SELECT count(DISTINCT backup_id) FROM pggit.backup_schedule_slots") == 12


def downtime(db, **settings):
    """Registered at T0, then no supervisor up until 05:00:20: hourly slots 01:00-05:00 are due."""
    clock = Clock(T0)
    sched = scheduler(dumps("0 * * * *", starting_deadline=3 * 3600 + 60, **settings), "h1", clock)
    sched.tick(Queue(db))
    clock.now = T0 + timedelta(hours=5)
    sched.tick(Queue(db))
    return [(r["slot_time"].hour, r["outcome"], r["reason"]) for r in recorded(db)]


def test_downtime_with_catch_up_latest_runs_the_on_time_slot_and_records_the_rest_missed(db):
    assert downtime(db, catch_up="latest") == [
        (1, "skipped", "missed"),  # past the 3 h deadline
        (2, "skipped", "missed"),  # passed over for 04:00
        (3, "skipped", "missed"),
        (4, "enqueued", None),
        (5, "enqueued", None),  # on time
    ]


def test_downtime_with_catch_up_all_runs_every_slot_within_the_deadline(db):
    assert downtime(db, catch_up="all") == [
        (1, "skipped", "missed"),
        (2, "enqueued", None),
        (3, "enqueued", None),
        (4, "enqueued", None),
        (5, "enqueued", None),
    ]


def test_downtime_with_catch_up_skip_runs_only_the_slot_on_time(db):
    assert downtime(db, catch_up="skip") == [(h, "skipped", "missed") for h in range(1, 5)] + [(5, "enqueued", None)]


def test_ticking_every_ten_minutes_across_the_spring_gap_fires_each_hourly_slot_once(db):
    # Europe/Paris, 2025-03-30: 02:00 local does not exist (01:00 UTC is 03:00 CEST)
    start = datetime(2025, 3, 29, 23, 0, 20, tzinfo=UTC)
    clock = Clock(start)
    sched = scheduler(dumps("0 * * * *", timezone="Europe/Paris"), "h1", clock)
    while clock.now < start + timedelta(hours=5):
        sched.tick(Queue(db))
        clock.now += timedelta(minutes=10)
    slots = [r["slot_time"] for r in recorded(db)]
    assert slots == [datetime(2025, 3, 30, hour, tzinfo=UTC) for hour in range(0, 4)]
    assert {r["outcome"] for r in recorded(db)} == {"enqueued"}


def test_ticking_across_the_autumn_repeat_fires_a_daily_slot_once(db):
    # Europe/Paris, 2025-10-26: 02:30 local happens at 00:30 UTC and again at 01:30 UTC
    start = datetime(2025, 10, 25, 22, 0, 20, tzinfo=UTC)
    clock = Clock(start)
    sched = scheduler(dumps("30 2 * * *", timezone="Europe/Paris"), "h1", clock)
    while clock.now < start + timedelta(hours=5):
        sched.tick(Queue(db))
        clock.now += timedelta(minutes=5)
    assert [r["slot_time"] for r in recorded(db)] == [datetime(2025, 10, 26, 0, 30, tzinfo=UTC)]


def test_a_differing_definition_on_another_host_is_logged_naming_both_hosts(db, caplog):
    clock = Clock(T0)
    ours, theirs = scheduler(dumps(), "host-a", clock), scheduler(dumps("*/20 * * * *"), "host-b", clock)
    ours.tick(Queue(db))
    clock.now = T0 + timedelta(minutes=30)
    with caplog.at_level(logging.ERROR, logger="pggit.scheduler"):
        results = theirs.tick(Queue(db)) + ours.tick(Queue(db))

    # host-b's differing definition records nothing; host-a's, which the schedule was
    # established with, goes on recording its slots
    assert results[0].conflict_host == "host-a" and results[0].record is None
    assert len(results) == 4 and all(r.conflict_host is None and r.record is not None for r in results[1:])
    assert [r["recorded_by"] for r in recorded(db)] == ["host-a"] * 3  # :10 and :20 missed, :30 enqueued
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "host=host-b" in errors[0] and "other_host=host-a" in errors[0] and "schedule=dumps" in errors[0]
    assert "records no slot" in errors[0]
    assert "host=host-a" in errors[1] and "other_host=host-b" in errors[1] and "established" in errors[1]


def test_a_schedule_that_overlaps_its_queued_run_skips_the_slot_and_says_so(db):
    clock = Clock(T0)
    sched = scheduler(dumps(overlap="skip"), "h1", clock)
    sched.tick(Queue(db))
    for minutes in (10, 20):
        clock.now = T0 + timedelta(minutes=minutes)
        sched.tick(Queue(db))
    assert [(r["outcome"], r["reason"]) for r in recorded(db)] == [("enqueued", None), ("skipped", "overlap")]
