"""An adapter's long database work keeps the worker alive and stops when told: the queries of a
pg_dump job's snapshot (row counts, a wait for a lock) and of the drill's row counts run in a
libpq.TickingSession, which calls the job's checkpoint at least every POLL_SECONDS while the
server works, and cancels the query on the server when the checkpoint says stop."""

from __future__ import annotations

import signal
import threading
import time

import psycopg2
import pytest
from psycopg2 import sql

from helpers.db import scalar
from pggit_supervisor.errors import Stopped
from pggit_supervisor.libpq import POLL_SECONDS, TickingSession
from pggit_supervisor.tools.pg_dump import open_snapshot
from pggit_supervisor.tools.pg_dump_snapshot import APPLICATION_NAME


class Ticks:
    """A checkpoint that records when it was called, and raises Stopped from call `stop_at` on."""

    def __init__(self, stop_at: int | None = None, on_call=None) -> None:
        self.times: list[float] = []
        self.stop_at = stop_at
        self.on_call = on_call

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        if self.on_call is not None:
            self.on_call(len(self.times))
        if self.stop_at is not None and len(self.times) >= self.stop_at:
            raise Stopped("job cancelled")

    def largest_gap(self, start: float, end: float) -> float:
        moments = [start, *self.times, end]
        return max(later - earlier for earlier, later in zip(moments, moments[1:], strict=False))


def _running(db, application_name: str) -> int:
    return scalar(
        db,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = %s AND state = 'active' AND pid <> pg_backend_pid()",
        (application_name,),
    )


def _gone(db, application_name: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _running(db, application_name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_slow_query_calls_the_checkpoint_at_least_every_second_while_it_runs(dsn):
    ticks = Ticks()
    with TickingSession(dsn, ticks) as session:
        start = time.monotonic()
        value = session.execute("SELECT pg_sleep(2.5), 42").fetchone()[1]
        end = time.monotonic()
    assert value == 42
    assert len(ticks.times) >= 3, ticks.times
    assert ticks.largest_gap(start, end) < 1.0, f"the checkpoint was silent for more than a second: {ticks.times}"


def test_a_stop_from_the_checkpoint_cancels_the_query_on_the_server(dsn, db):
    ticks = Ticks(stop_at=2)
    name = "pggit-test ticking cancel"
    session = TickingSession(dsn, ticks, application_name=name)
    start = time.monotonic()
    with pytest.raises(Stopped, match="job cancelled"):
        session.execute("SELECT pg_sleep(60)")
    assert time.monotonic() - start < 5 * POLL_SECONDS + 1, "the stop waited for the query"
    assert session.closed
    assert _gone(db, name), "the cancelled query still runs on the server"


@pytest.fixture
def locked_table(db, connect):
    """lock(name, rows) -> a connection holding an ACCESS EXCLUSIVE lock on a new table
    public.<name> of `rows` rows, so the snapshot's count of it waits; every lock is released and
    every table dropped afterwards."""
    made = []

    def lock(name: str, rows: int = 1):
        db.cursor().execute(
            sql.SQL(
                "DROP TABLE IF EXISTS public.{0}; CREATE TABLE public.{0} AS SELECT generate_series(1, %s) AS n"
            ).format(sql.Identifier(name)),
            (rows,),
        )
        locker = connect()
        locker.autocommit = False
        locker.cursor().execute(sql.SQL("LOCK TABLE public.{} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(name)))
        made.append((name, locker))
        return locker

    yield lock
    for name, locker in made:
        locker.rollback()
        db.cursor().execute(sql.SQL("DROP TABLE IF EXISTS public.{}").format(sql.Identifier(name)))


def test_snapshot_row_count_waiting_for_a_lock_keeps_ticking_and_counts_once_it_is_free(dsn, db, locked_table):
    locker = locked_table("locked_orders", rows=7)

    def release_after_three(calls: int) -> None:
        if calls == 3 and not locker.closed:
            locker.commit()

    ticks = Ticks(on_call=release_after_three)
    snapshot = open_snapshot(dsn, db.info.dbname, "public", ticks)  # counts in a thread beside pg_dump
    try:
        start = time.monotonic()
        facts = snapshot.facts()  # waits for them with the lease kept
        end = time.monotonic()
    finally:
        snapshot.close()
    assert facts["row_counts"]["public.locked_orders"] == 7, facts
    assert len(ticks.times) >= 3 and end - start >= 3 * POLL_SECONDS, "the count did not wait for the lock"
    assert ticks.largest_gap(start, end) < 1.0, ticks.times


def test_snapshot_stopped_while_counting_raises_stopped_and_leaves_no_session(dsn, db, locked_table):
    locked_table("held_orders")
    snapshot = open_snapshot(dsn, db.info.dbname, "public", Ticks(stop_at=2))
    with pytest.raises(Stopped):
        snapshot.facts()
    assert not [t for t in threading.enumerate() if t.name == "row-counts"], "the counting thread was left"
    assert _gone(db, APPLICATION_NAME), "the snapshot's count still waits on the server"
    assert not scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APPLICATION_NAME,)), (
        "the snapshot's connection was left open"
    )


def test_a_failed_query_leaves_the_session_usable_for_the_next(dsn):
    with TickingSession(dsn, Ticks()) as session:
        session.execute("BEGIN")
        session.execute("SAVEPOINT one")
        with pytest.raises(psycopg2.errors.DivisionByZero):
            session.execute("SELECT 1 / 0")
        session.execute("ROLLBACK TO SAVEPOINT one")
        assert session.execute("SELECT 2").fetchone()[0] == 2


def test_a_session_left_by_any_exception_mid_query_cancels_it_on_the_server(dsn, db):
    """Not only the checkpoint's stop: a signal handler's exception (the worker's SIGTERM) raised
    while the session waits for the server leaves by the context manager, whose close cancels
    the statement first; a plain close would let the server run it on until it next writes."""
    name = "pggit-test ticking interrupted"

    def interrupt(_signum, _frame):
        raise Stopped("signal")

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(Stopped, match="signal"):
            with TickingSession(dsn, Ticks(), application_name=name) as session:
                signal.setitimer(signal.ITIMER_REAL, 2 * POLL_SECONDS)
                session.execute("SELECT pg_sleep(60)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert session.closed
    assert _gone(db, name), "the interrupted query still runs on the server"


def _wait_for_the_count_to_wait(db) -> None:
    """Until the snapshot's counting thread waits for a table lock on the server."""
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
    deadline = time.monotonic() + 10
    while not scalar(db, waiting, (APPLICATION_NAME,)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scalar(db, waiting, (APPLICATION_NAME,)) == 1, "the count never waited for the lock"


def test_a_snapshot_session_lost_while_counting_leaves_the_counts_skipped_with_why(dsn, db, locked_table):
    """The counts run beside pg_dump (issue 12 figure 4); the dump does not depend on them, so
    a session that dies while counting skips them with the reason instead of failing the job."""
    locked_table("lost_orders")
    snapshot = open_snapshot(dsn, db.info.dbname, "public", Ticks())
    try:
        _wait_for_the_count_to_wait(db)
        assert scalar(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                      (APPLICATION_NAME,))  # fmt: skip
        facts = snapshot.facts()
    finally:
        snapshot.close()
    assert "row_counts" not in facts
    assert facts["row_counts_skipped"].startswith("row counts failed: "), facts


def test_closing_the_snapshot_while_a_count_waits_stops_it_in_the_counting_thread(dsn, db, locked_table):
    """A stop while pg_dump runs (the executor's discard): close() asks the counting thread to
    stop, its session's own checkpoint cancels the waiting count on the server within a poll,
    and nothing is left: no thread, no backend, no connection."""
    locked_table("closed_orders")
    snapshot = open_snapshot(dsn, db.info.dbname, "public", Ticks())
    _wait_for_the_count_to_wait(db)
    snapshot.close()
    assert not [t for t in threading.enumerate() if t.name == "row-counts"], "the counting thread was left"
    assert _gone(db, APPLICATION_NAME), "the snapshot's count still waits on the server"
    assert snapshot.session.closed
