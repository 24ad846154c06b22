"""When slots fall (scheduler.fire_times) and what a due slot asks for (scheduler.plan), with
the clock given: daylight saving gaps and repeats, macros, catch-up policies, deadlines."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pggit_supervisor.scheduler import Schedule, cron_problem, fire_times, next_fire, plan

UTC = timezone.utc


def schedule(cron: str, zone: str = "UTC", **settings) -> Schedule:
    return Schedule(name="s", cron=cron, tool="pg_dump", args={}, timezone=zone, **settings)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_a_daily_slot_in_the_spring_gap_fires_once_an_hour_later_and_none_is_lost():
    # Europe/Paris skips 02:00-03:00 on 2025-03-30 (01:00 UTC)
    nightly = schedule("30 2 * * *", "Europe/Paris")
    slots = fire_times(nightly, utc(2025, 3, 28, 12), utc(2025, 4, 1, 12))
    assert slots == [
        utc(2025, 3, 29, 1, 30),  # 02:30 CET
        utc(2025, 3, 30, 1, 30),  # 02:30 does not exist: 03:30 CEST, the same instant as 02:30 CET
        utc(2025, 3, 31, 0, 30),  # 02:30 CEST
        utc(2025, 4, 1, 0, 30),
    ]


def test_an_hourly_schedule_across_the_spring_gap_never_fires_twice_at_one_instant():
    hourly = schedule("0 * * * *", "Europe/Paris")
    slots = fire_times(hourly, utc(2025, 3, 29, 23, 30), utc(2025, 3, 30, 3, 30))
    assert slots == [utc(2025, 3, 30, 0), utc(2025, 3, 30, 1), utc(2025, 3, 30, 2), utc(2025, 3, 30, 3)]
    assert len(set(slots)) == len(slots)


def test_a_daily_slot_in_the_autumn_repeat_fires_once_at_its_first_occurrence():
    # Europe/Paris shows 02:00-03:00 twice on 2025-10-26 (first CEST at 00:00 UTC, then CET at 01:00 UTC)
    nightly = schedule("30 2 * * *", "Europe/Paris")
    slots = fire_times(nightly, utc(2025, 10, 25, 12), utc(2025, 10, 27, 12))
    assert slots == [utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)]  # 02:30 CEST once, then 02:30 CET


def test_a_slot_exactly_at_after_is_not_due_again_but_one_at_until_is():
    every = schedule("*/15 * * * *")
    assert fire_times(every, utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 30)) == [
        utc(2026, 1, 1, 0, 15),
        utc(2026, 1, 1, 0, 30),
    ]


def test_macros_and_the_limit():
    assert fire_times(schedule("@daily"), utc(2026, 1, 1, 12), utc(2026, 1, 4)) == [
        utc(2026, 1, 2),
        utc(2026, 1, 3),
        utc(2026, 1, 4),
    ]
    assert len(fire_times(schedule("* * * * *"), utc(2026, 1, 1), utc(2026, 2, 1), limit=10)) == 10
    assert next_fire(schedule("@hourly"), utc(2026, 1, 1, 0, 5)) == utc(2026, 1, 1, 1)
    assert next_fire(schedule("0 0 30 2 *"), utc(2026, 1, 1)) is None, "30 February never comes"


@pytest.mark.parametrize(
    "expression, problem",
    [
        ("0 2 * * *", None),
        ("@daily", None),
        ("@DAILY", None),
        ("0 2 * *", "must have 5 fields"),
        ("0 0 2 * * *", "must have 5 fields"),
        ("61 * * * *", "not a valid cron expression"),
        ("@fortnightly", "not a cron macro"),
        ("", "must be a cron expression"),
        (5, "must be a cron expression"),
    ],
)
def test_cron_expressions_are_five_fields_or_a_macro(expression, problem):
    found = cron_problem(expression)
    assert (found is None) if problem is None else (problem in found)


# --- catch-up ---------------------------------------------------------------------------------

NOW = utc(2026, 1, 10, 12, 0, 30)
HOURLY = [utc(2026, 1, 10, hour) for hour in range(3, 13)]  # 03:00 .. 12:00, the last one on time


def decisions(**settings):
    found = plan(schedule("0 * * * *", starting_deadline=6 * 3600, **settings), HOURLY, NOW, on_time=90)
    return [(d.slot.hour, d.decision) for d in found]


def test_catch_up_latest_runs_the_on_time_slot_and_the_newest_missed_one_within_the_deadline():
    assert decisions(catch_up="latest") == [
        *((hour, "missed") for hour in range(3, 11)),  # 03-05 past the deadline, 06-10 passed over
        (11, "enqueue"),
        (12, "enqueue"),
    ]


def test_catch_up_all_runs_every_missed_slot_within_the_deadline():
    assert decisions(catch_up="all") == [
        *((hour, "missed") for hour in range(3, 7)),  # 06:00 is 6 h 30 s late: past the deadline
        *((hour, "enqueue") for hour in range(7, 13)),
    ]


def test_catch_up_skip_runs_only_the_slot_on_time():
    assert decisions(catch_up="skip") == [*((hour, "missed") for hour in range(3, 12)), (12, "enqueue")]


def test_a_disabled_schedule_records_every_slot_disabled():
    assert {decision for _, decision in decisions(enabled=False)} == {"disabled"}


def test_a_missed_slot_says_why():
    found = plan(schedule("0 * * * *", starting_deadline=7200, catch_up="skip"), HOURLY, NOW, on_time=90)
    assert "starting_deadline (7200s)" in found[0].detail and "catch_up skip" in found[-2].detail


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"])
def test_the_walk_without_margin_finds_the_same_slots_as_the_walk_with_it(zone, monkeypatch):
    """fire_times skips its 3 h margins where the zone's offset is steady around the window (the
    scheduler's cost, issue 12 figure 6s); the slots must be exactly those the margins find, in
    windows next to, across and far from each zone's changes."""
    import random

    import pggit_supervisor.scheduler as scheduler

    crons = ["*/7 * * * *", "30 2 * * *", "0 * * * *", "15 1,2,3 * * *", "45 23 * * 0", "14 2 * * *"]
    changes = [utc(2025, 3, 30, 1), utc(2025, 10, 26, 1), utc(2025, 3, 9, 7), utc(2025, 11, 2, 6),
               utc(2025, 4, 5, 15), utc(2025, 10, 4, 15)]  # fmt: skip
    rng = random.Random(12)
    windows = []
    for change in changes:
        for _ in range(4):
            after = change + timedelta(minutes=rng.randint(-600, 600))
            windows.append((after, after + timedelta(minutes=rng.choice([1, 5, 30, 90, 300]))))
        for minutes in range(-70, 75, 10):  # windows that start inside a gap or a repeat
            windows.append((change + timedelta(minutes=minutes), change + timedelta(minutes=minutes + 30)))
    windows += [(utc(2025, 7, 1, 10, 3), utc(2025, 7, 1, 10, 4)), (utc(2025, 1, 15), utc(2025, 1, 16, 6))]
    fast = {(c, w): fire_times(schedule(c, zone), *w) for c in crons for w in windows}
    monkeypatch.setattr(scheduler, "_steady", lambda *_: False)  # the reference walks every margin
    slow = {(c, w): fire_times(schedule(c, zone), *w) for c in crons for w in windows}
    assert fast == slow
    assert sum(len(found) for found in fast.values()) > 1000  # the windows do hold slots
