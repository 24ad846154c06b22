"""The worker's ready-NOTIFY rate limit (worker.wait_for_work), against a real queue database:
the first hint after a claim that was not itself prompted by one wakes the worker at once
(issue 12 figure 2: a job queued just after the worker found the queue empty used to wait up to
NOTIFY_MIN_GAP), and once a hint led to a claim that found nothing, the next one waits the gap
(a flood of spoofed NOTIFYs costs at most one claim per NOTIFY_MIN_GAP).

The worker runs in this process over its own connection; only its waiting is exercised."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from pggit_supervisor.config.loader import load_config
from pggit_supervisor.worker import NOTIFY_MIN_GAP, Worker


@pytest.fixture
def worker(dsn, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("poll_interval: 3\ntools:\n  pg_dump: {}\n")
    config = load_config(str(path), {}, dsn=dsn, check_paths=False)
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    made = Worker(config, "wakeup-test", writer, release_predecessor=False, parent_pid=os.getppid())
    assert made.ensure_connected() is not None
    yield made
    if made.queue is not None:
        made.queue.conn.close()
    os.close(reader)
    os.close(writer)


def hint(db) -> None:
    db.cursor().execute("NOTIFY pggit_backup_job_ready, 'pg_dump'")


def timed_wait(worker: Worker, prompted: bool) -> tuple[float, bool]:
    """How long the wait took, and whether a hint ended it."""
    assert worker.queue is not None
    started = time.monotonic()
    hinted = worker.wait_for_work(worker.queue, prompted)
    return time.monotonic() - started, hinted


def test_a_hint_after_an_unprompted_claim_wakes_at_once_and_the_next_waits_the_gap(worker, db):
    hint(db)
    # the claim before this wait was the worker's own (start, job, poll)
    first, hinted = timed_wait(worker, prompted=False)
    assert first < NOTIFY_MIN_GAP, f"the first hint waited {first:.3f} s"
    assert hinted is True  # the claim that follows was prompted by a hint

    hint(db)  # that claim found nothing (no job): a second hint may only wake after the gap
    second, hinted = timed_wait(worker, prompted=hinted)
    assert second >= NOTIFY_MIN_GAP, f"the second hint woke after {second:.3f} s"
    assert hinted is True


def test_a_hint_for_a_tool_the_worker_does_not_serve_does_not_wake_it(worker, db):
    db.cursor().execute("NOTIFY pggit_backup_job_ready, 'barman'")
    worker.config = dataclasses.replace(worker.config, poll_interval=1.2)
    waited, hinted = timed_wait(worker, prompted=False)
    assert waited >= 1.2, f"woke after {waited:.3f} s for another tool's hint"
    assert hinted is False  # woken by the poll deadline, not by a hint
