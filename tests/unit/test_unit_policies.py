"""The supervisor's rules, in-process with a fake clock: restart back-off, the crash-loop rule,
the silent-worker rule and systemd's watchdog (pggit_supervisor.policies)."""

from __future__ import annotations

import pytest

from helpers.clock import FakeClock
from pggit_supervisor.policies import (
    CRASH_WINDOW_SECONDS,
    HEALTHY_RUN_SECONDS,
    MAX_RESTART_DELAY,
    CrashLoop,
    SlotBackoff,
    Watchdog,
    all_heartbeating,
    crash_loop_limit,
    is_silent,
    ran_healthy,
    restart_delay,
)

# -- restart back-off -------------------------------------------------------------------------


def test_a_slots_first_death_restarts_at_once_then_the_delay_doubles_up_to_the_cap():
    assert [restart_delay(n) for n in range(1, 10)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert MAX_RESTART_DELAY == 30.0


def test_the_restart_delay_never_exceeds_the_cap_however_many_deaths():
    assert restart_delay(1000) == MAX_RESTART_DELAY


def test_a_slot_that_never_died_may_start_at_any_time():
    assert SlotBackoff().may_start(0.0)


def test_a_dead_slot_may_start_only_once_its_delay_has_passed():
    clock = FakeClock()
    backoff = SlotBackoff().after_death(clock())
    assert backoff.may_start(clock())  # first death: at once
    backoff = backoff.after_death(clock())
    assert (backoff.failures, backoff.not_before) == (2, clock() + 1.0)
    assert not backoff.may_start(clock.advance(0.999))
    assert backoff.may_start(clock.advance(0.001))  # exactly at not_before


def test_deaths_in_a_row_grow_the_slots_delay_to_the_cap_and_keep_it_there():
    clock = FakeClock()
    backoff = SlotBackoff()
    delays = []
    for _ in range(9):
        backoff = backoff.after_death(clock())
        delays.append(backoff.not_before - clock())
        clock.advance(backoff.not_before - clock())  # the next worker starts and dies at once
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_healthy_run_resets_the_back_off_so_the_next_death_restarts_at_once():
    clock = FakeClock()
    backoff = SlotBackoff()
    for _ in range(5):
        backoff = backoff.after_death(clock())
    started = backoff.not_before
    clock.now = started
    clock.advance(HEALTHY_RUN_SECONDS + 0.5)
    assert ran_healthy(started, clock())
    backoff = backoff.after_healthy_run()
    assert backoff.failures == 0
    assert backoff.after_death(clock()).not_before == clock()


def test_a_healthy_run_keeps_the_start_time_already_granted():
    backoff = SlotBackoff(4, 1234.0).after_healthy_run()
    assert backoff == SlotBackoff(0, 1234.0)


def test_a_worker_is_healthy_only_after_living_longer_than_the_healthy_run():
    assert not ran_healthy(100.0, 100.0 + HEALTHY_RUN_SECONDS)
    assert ran_healthy(100.0, 100.0 + HEALTHY_RUN_SECONDS + 0.001)


def test_backoff_states_are_values_a_rule_does_not_change():
    before = SlotBackoff()
    before.after_death(5.0)
    assert before == SlotBackoff()
    with pytest.raises(AttributeError):
        before.failures = 3  # type: ignore[misc]


# -- the crash-loop rule ----------------------------------------------------------------------


def test_the_crash_loop_limit_is_five_or_twice_the_workers():
    assert [crash_loop_limit(n) for n in (1, 2, 3, 4, 10)] == [5, 5, 6, 8, 20]


def test_deaths_up_to_the_limit_are_bad_luck_one_more_is_a_loop():
    clock = FakeClock()
    loop = CrashLoop()
    for _ in range(crash_loop_limit(1)):
        loop = loop.after_death(clock.advance(1.0))
        assert not loop.is_looping(1)
    loop = loop.after_death(clock.advance(1.0))
    assert loop.is_looping(1)


def test_more_workers_allow_more_deaths_before_a_loop():
    clock = FakeClock()
    loop = CrashLoop()
    for _ in range(7):
        loop = loop.after_death(clock.advance(1.0))
    assert loop.is_looping(3)  # limit 6
    assert not loop.is_looping(4)  # limit 8


def test_deaths_older_than_the_window_are_forgotten():
    clock = FakeClock()
    loop = CrashLoop()
    for _ in range(5):
        loop = loop.after_death(clock.advance(1.0))
    clock.advance(CRASH_WINDOW_SECONDS + 1.0)  # the five are now out of the window
    loop = loop.after_death(clock())
    assert loop.deaths == (clock(),)
    assert not loop.is_looping(1)


def test_a_death_exactly_one_window_old_still_counts():
    loop = CrashLoop((100.0,)).after_death(100.0 + CRASH_WINDOW_SECONDS)
    assert loop.deaths == (100.0, 100.0 + CRASH_WINDOW_SECONDS)
    loop = CrashLoop((100.0,)).after_death(100.0 + CRASH_WINDOW_SECONDS + 0.001)
    assert loop.deaths == (100.0 + CRASH_WINDOW_SECONDS + 0.001,)


def test_deaths_spread_wider_than_the_window_never_make_a_loop():
    clock = FakeClock()
    loop = CrashLoop()
    for _ in range(100):  # one death every 11 s: at most 6 in any 60 s window
        loop = loop.after_death(clock.advance(11.0))
        assert not loop.is_looping(3)
        assert len(loop.deaths) <= 6


def test_a_crash_loop_state_is_a_value():
    loop = CrashLoop()
    loop.after_death(1.0)
    assert loop.deaths == ()


# -- the silent-worker rule -------------------------------------------------------------------


def test_a_worker_silent_for_exactly_worker_timeout_is_not_yet_silent():
    assert not is_silent(last_beat=100.0, now=130.0, worker_timeout=30.0)
    assert is_silent(last_beat=100.0, now=130.001, worker_timeout=30.0)


def test_a_worker_that_just_beat_is_not_silent():
    clock = FakeClock()
    last_beat = clock()
    clock.advance(29.0)
    assert not is_silent(last_beat, clock(), 30.0)
    last_beat = clock()  # it beat again
    clock.advance(29.0)
    assert not is_silent(last_beat, clock(), 30.0)
    clock.advance(1.5)
    assert is_silent(last_beat, clock(), 30.0)


def test_all_heartbeating_is_false_when_one_worker_is_overdue():
    assert all_heartbeating([], 500.0, 30.0)  # no workers: nothing is overdue
    assert all_heartbeating([480.0, 470.0], 500.0, 30.0)
    assert not all_heartbeating([480.0, 469.0], 500.0, 30.0)


# -- the watchdog rule ------------------------------------------------------------------------


def test_without_a_watchdog_there_is_never_a_ping_and_the_loop_sleeps_its_longest():
    watchdog = Watchdog(None)
    assert not watchdog.due(1e9)
    assert watchdog.check(1e9, healthy=True) == (False, watchdog)
    assert watchdog.wait(0.0, 1.0) == 1.0


def test_the_first_check_pings_at_once_then_every_interval_while_healthy():
    clock = FakeClock()
    watchdog = Watchdog(5.0)
    pings = []
    for _ in range(21):  # 10 s in steps of 0.5 s
        if watchdog.due(clock()):
            ping, watchdog = watchdog.check(clock(), healthy=True)
            if ping:
                pings.append(clock() - 1000.0)
        clock.advance(0.5)
    assert pings == [0.0, 5.0, 10.0]


def test_an_unhealthy_service_gets_no_ping_and_looks_again_within_a_second():
    ping, watchdog = Watchdog(5.0).check(1000.0, healthy=False)
    assert not ping
    assert watchdog.next_at == 1001.0
    assert not watchdog.due(1000.999)
    ping, watchdog = watchdog.check(1001.0, healthy=True)  # healthy again: ping at once
    assert ping
    assert watchdog.next_at == 1006.0


def test_a_short_watchdog_interval_rechecks_an_unhealthy_service_within_the_interval():
    ping, watchdog = Watchdog(0.25).check(10.0, healthy=False)
    assert not ping
    assert watchdog.next_at == 10.25


def test_a_check_before_the_ping_is_due_changes_nothing():
    watchdog = Watchdog(5.0, next_at=1005.0)
    assert watchdog.check(1004.0, healthy=True) == (False, watchdog)
    assert watchdog.check(1004.0, healthy=False) == (False, watchdog)


def test_the_loop_sleeps_no_longer_than_until_the_next_ping_and_never_negative():
    watchdog = Watchdog(5.0, next_at=1000.4)
    assert watchdog.wait(1000.0, 1.0) == pytest.approx(0.4)
    assert watchdog.wait(999.0, 1.0) == 1.0  # the longest sleep caps it
    assert watchdog.wait(1002.0, 1.0) == 0.0  # overdue: look at once
