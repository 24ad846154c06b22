"""When a target's retention schedule last fired (retention_jobs.latest_slot): the newest slot
at or before now, read in the schedule's zone, none when it is older than a day (every
supervisor was down: the next slot, or the next backup, queues the run)."""

from __future__ import annotations

from datetime import datetime, timezone

from pggit_supervisor.retention import Retention
from pggit_supervisor.retention_jobs import latest_slot

UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def target(schedule: str, zone: str = "UTC") -> Retention:
    return Retention(target={"tool": "pg_dump"}, schedule=schedule, timezone=zone)


def test_the_newest_slot_at_or_before_now_counts_and_now_itself_is_a_slot():
    assert latest_slot(target("@hourly"), at("2026-12-02 14:37:12")) == at("2026-12-02 14:00:00")
    assert latest_slot(target("@hourly"), at("2026-12-02 14:00:00")) == at("2026-12-02 14:00:00")
    assert latest_slot(target("*/15 * * * *"), at("2026-12-02 14:44:59")) == at("2026-12-02 14:30:00")


def test_a_slot_older_than_a_day_is_left_to_the_next_one():
    assert latest_slot(target("0 3 * * *"), at("2026-12-03 02:59:00")) == at("2026-12-02 03:00:00")
    assert latest_slot(target("0 3 * * 1"), at("2026-12-03 12:00:00")) is None  # Monday the 30th


def test_slots_are_read_in_the_schedules_zone_across_a_change_of_offset():
    paris = target("30 2 * * *", "Europe/Paris")
    # 29 March 2026: 02:30 does not exist in Paris (02:00 -> 03:00); it fires at 01:30 UTC
    assert latest_slot(paris, at("2026-03-29 02:00:00")) == at("2026-03-29 01:30:00")
    # 25 October 2026: 02:30 shows twice; the first (00:30 UTC) is the slot, the second is not another
    assert latest_slot(paris, at("2026-10-25 01:45:00")) == at("2026-10-25 00:30:00")
    assert latest_slot(paris, at("2026-10-24 23:00:00")) == at("2026-10-24 00:30:00")


def test_a_schedule_that_never_fires_has_no_slot_and_does_not_raise():
    # croniter accepts 30 February (check-config does too) but finds no slot before now: the
    # worker's idle tick must not die of it, or every worker dies in a loop and the service stops
    assert latest_slot(target("0 0 30 2 *"), at("2026-12-02 14:37:12")) is None
