"""Figure 2, pickup latency: from the commit that queues a job on an idle queue to the moment the
job's tool runs its first instruction (a C stamp tool writes CLOCK_REALTIME to a file), p50 / p99,
with NOTIFY and with NOTIFY lost (poll only).

"NOTIFY lost" is made in the throwaway database: the job trigger's ready NOTIFY is taken out of
its function (everything else the trigger does stays), so the worker only finds jobs by polling.
Each job is queued after the previous one completed, 20 to 620 ms later (spread evenly over the
jobs), so pickups start both inside and after the worker's NOTIFY_MIN_GAP (its flood guard, which
must not delay the first hint after the worker found the queue empty). The poll-only case uses
poll_interval 0.2 s; its baseline is that interval.
"""

from __future__ import annotations

import time
from pathlib import Path

from common import Context, Row, Supervisor, admin, enqueue_custom, ms, percentile, scalar, wait_until

from pggit_supervisor.worker import NOTIFY_MIN_GAP

POLL_ONLY_INTERVAL = 0.2
STATE = "SELECT status FROM pggit.backup_jobs WHERE job_id = %s"


def drop_ready_notify(conn) -> None:
    """The trigger function without its ready NOTIFY: a NOTIFY lost on every enqueue."""
    with conn.cursor() as cur:
        cur.execute("""SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p
                        WHERE prosrc LIKE '%pggit_backup_job_ready%'""")
        for _, definition in cur.fetchall():
            cur.execute(definition.replace("PERFORM pg_notify('pggit_backup_job_ready', NEW.tool);", "NULL;"))


def pickups(ctx: Context, jobs: int, notify: bool) -> list[float]:
    dbname = ctx.new_database("latency")
    stamps = ctx.directory("stamps")
    settings = {"poll_interval": 10 if notify else POLL_ONLY_INTERVAL}
    service = Supervisor(ctx, f"latency{int(notify)}", dsn=ctx.dsn(dbname), **settings).start()
    try:
        service.wait_for_log("worker started")
        with admin(ctx.dsn(dbname)) as conn:
            if not notify:
                drop_ready_notify(conn)
            wait_until(lambda: scalar(conn, "SELECT count(*) FROM pggit.backup_workers") >= 1, 30, "worker")
            latencies = []
            for i in range(jobs):
                time.sleep(0.02 + (i % 7) * (NOTIFY_MIN_GAP + 0.1) / 6)
                stamp = Path(stamps, f"stamp-{i}")
                conn.autocommit = False
                (job_id,) = enqueue_custom(conn, f"{ctx.stamp_tool} {stamp}")
                conn.commit()
                committed = time.time()
                conn.autocommit = True
                wait_until(lambda stamp=stamp: stamp.exists() and stamp.read_text().endswith("\n"), 30, f"stamp {i}")
                latencies.append(float(stamp.read_text()) - committed)
                wait_until(lambda job_id=job_id: scalar(conn, STATE, (job_id,)) == "completed", 30, f"job {i}", 0.005)
            return latencies
    finally:
        service.stop()


def run(ctx: Context) -> list[Row]:
    jobs = 50 if ctx.quick else 200
    rows = []
    with_notify = pickups(ctx, jobs, notify=True)
    p50, p99 = percentile(with_notify, 50), percentile(with_notify, 99)
    rows.append(Row("2 pickup", f"NOTIFY p50 ({jobs} jobs), goal 3 ms", "3 ms", ms(p50), p50 / 0.003, 1.0))
    rows.append(Row("2 pickup", f"NOTIFY p99 ({jobs} jobs), goal 15 ms", "15 ms", ms(p99), p99 / 0.015, 1.0))
    poll_jobs = max(20, jobs // 4) if ctx.quick else jobs
    lost = pickups(ctx, poll_jobs, notify=False)
    interval = f"poll {POLL_ONLY_INTERVAL * 1e3:.0f} ms"
    p50, p99 = percentile(lost, 50), percentile(lost, 99)
    rows.append(Row("2 pickup", f"NOTIFY lost p50 ({poll_jobs} jobs)", interval, ms(p50), p50 / POLL_ONLY_INTERVAL))
    rows.append(Row("2 pickup", f"NOTIFY lost p99 ({poll_jobs} jobs)", interval, ms(p99), p99 / POLL_ONLY_INTERVAL))
    return rows
