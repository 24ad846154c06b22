"""Figure 3, rescue:

- a busy worker killed with SIGKILL, to its job running again (claimed again, attempt 2) on the
  same supervisor's replacement worker; goal under 0.5 s;
- host loss: a whole supervisor (its session: supervisor, workers, tool) SIGKILLed while its
  worker runs a job, to that job running again on another supervisor (another worker_id: another
  host) on the same queue. That one is bounded by lease_seconds (5 s here, the smallest allowed)
  plus the other host's rescue pass (every lease_seconds / 2, at its next wake-up: poll_interval
  1 s here); it is reported as the time over the lease.

"Running again" is the queue row: status running with attempts 2, polled every millisecond.
A database of its own per trial, so no trial sees another's jobs.
"""

from __future__ import annotations

import os
import signal
import statistics
import time

from common import Context, Row, Supervisor, admin, enqueue_custom, percentile, wait_until

LEASE = 5
RUNNING = "SELECT status, attempts, locked_by FROM pggit.backup_jobs WHERE job_id = %s"


def _row(conn, job_id: str) -> tuple:
    with conn.cursor() as cur:
        cur.execute(RUNNING, (job_id,))
        return cur.fetchone()


def worker_kill(ctx: Context) -> float:
    dbname = ctx.new_database("rescue")
    service = Supervisor(ctx, "victim", dsn=ctx.dsn(dbname), lease_seconds=LEASE).start()
    try:
        service.wait_for_log("worker started")
        with admin(ctx.dsn(dbname)) as conn:
            (job_id,) = enqueue_custom(conn, "/bin/sleep 60", max_attempts=3)
            wait_until(lambda: _row(conn, job_id)[:2] == ("running", 1), 30, "first claim")
            service.wait_for_log("job claimed")
            (worker,) = service.workers()
            os.kill(worker.pid, signal.SIGKILL)
            killed = time.perf_counter()
            wait_until(lambda: _row(conn, job_id)[:2] == ("running", 2), 30, "the job running again")
            return time.perf_counter() - killed
    finally:
        service.stop()


def host_loss(ctx: Context) -> float:
    dbname = ctx.new_database("hostloss")
    settings = dict(dsn=ctx.dsn(dbname), lease_seconds=LEASE, poll_interval=1)
    lost = Supervisor(ctx, "hosta", **settings).start()
    other = Supervisor(ctx, "hostb", **settings)
    try:
        lost.wait_for_log("worker started")
        with admin(ctx.dsn(dbname)) as conn:
            (job_id,) = enqueue_custom(conn, "/bin/sleep 60", max_attempts=3)
            wait_until(lambda: _row(conn, job_id)[:2] == ("running", 1), 30, "first claim")
            other.start()
            other.wait_for_log("worker started")
            lost.kill_host()
            killed = time.perf_counter()
            again = wait_until(lambda: (r := _row(conn, job_id))[:2] == ("running", 2) and r, 4 * LEASE, "re-run")
            assert again[2].startswith("hostb/"), f"re-run by {again[2]}"
            return time.perf_counter() - killed
    finally:
        lost.stop()
        other.stop()


def run(ctx: Context) -> list[Row]:
    kills = [worker_kill(ctx) for _ in range(3 if ctx.quick else 10)]
    losses = [host_loss(ctx) for _ in range(2 if ctx.quick else 6)]
    p50 = statistics.median(kills)
    worst = max(kills)
    rows = [
        Row("3 rescue", f"worker SIGKILL to re-run, median of {len(kills)}", "goal 0.5 s", f"{p50:.3f} s",
            p50 / 0.5, 1.0),
        Row("3 rescue", f"worker SIGKILL to re-run, worst of {len(kills)}", "goal 0.5 s", f"{worst:.3f} s",
            worst / 0.5, 1.0),
    ]  # fmt: skip
    spread = ", ".join(f"{t:.1f}" for t in sorted(losses))
    for label, value in (("min", min(losses)), ("median", statistics.median(losses)), ("max", max(losses))):
        rows.append(Row("3 rescue", f"host loss to re-run, {label} of {len(losses)}", f"lease {LEASE} s",
                        f"{value:.2f} s", value / LEASE, 1.5))  # fmt: skip
    print(f"host loss re-run times (s): {spread}; p90 {percentile(losses, 90):.2f}")
    return rows
