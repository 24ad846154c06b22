"""Figure 1, queue throughput: no-op jobs per second drained by 1, 2, 4 and 8 workers of a real
supervisor, each job running /bin/true through the real runner (custom tool, allowlisted), against
the limit measured in the same run: pgbench at the same concurrency (one thread per client) doing
a bare SKIP LOCKED claim + complete on a plain table and spawning /bin/true per job (\\shell),
and the same cycle without the spawn (the bare SQL cycle).

The supervisor's figure is measured from the commit that queues the whole batch (its workers
already idle and LISTENing) to the last job completed, seen by polling the queue every 5 ms.
"""

from __future__ import annotations

import re
import subprocess
import time

from common import PGBENCH, Context, Row, Supervisor, admin, enqueue_custom, scalar, wait_until

CLAIM = """UPDATE plain_jobs SET status = 'running', locked_by = 'w' WHERE id = (SELECT id FROM plain_jobs
  WHERE status = 'queued' ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id \\gset
"""
COMPLETE = "UPDATE plain_jobs SET status = 'completed' WHERE id = :id AND status = 'running';\n"


def pgbench_tps(ctx: Context, dbname: str, clients: int, jobs: int, spawn: bool) -> float:
    with admin(ctx.dsn(dbname)) as conn:
        cur = conn.cursor()
        cur.execute("DROP TABLE IF EXISTS plain_jobs")
        cur.execute("""CREATE TABLE plain_jobs (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'queued',
                       locked_by text, created_at timestamptz NOT NULL DEFAULT clock_timestamp());
                       CREATE INDEX ON plain_jobs (created_at) WHERE status = 'queued'""")
        cur.execute("INSERT INTO plain_jobs (status) SELECT 'queued' FROM generate_series(1, %s)", (jobs,))
        cur.execute("VACUUM ANALYZE plain_jobs")
    script = ctx.scratch / f"cycle-{int(spawn)}.sql"
    script.write_text(CLAIM + ("\\shell /bin/true\n" if spawn else "") + COMPLETE)
    per_client = max(1, jobs // clients)
    out = subprocess.run(
        [PGBENCH, "-n", "-h", "127.0.0.1", "-p", str(ctx.cluster.port), "-U", "postgres",
         "-c", str(clients), "-j", str(clients), "-t", str(per_client), "-f", str(script), dbname],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))


def supervisor_rate(ctx: Context, workers: int, jobs: int) -> float:
    dbname = ctx.new_database("tput")
    service = Supervisor(ctx, f"tput{workers}", dsn=ctx.dsn(dbname), workers=workers).start()
    try:
        service.wait_for_log("worker started", workers)
        with admin(ctx.dsn(dbname)) as conn:
            wait_until(lambda: scalar(conn, "SELECT count(*) FROM pggit.backup_workers") >= workers, 30, "workers")
            time.sleep(1.0)  # past NOTIFY_MIN_GAP of their first idle pass: the batch's NOTIFY wakes them at once
            conn.autocommit = False
            enqueue_custom(conn, "/bin/true", jobs)
            conn.commit()
            started = time.perf_counter()
            conn.autocommit = True
            done = "SELECT count(*) FROM pggit.backup_jobs WHERE status = 'completed'"
            wait_until(lambda: scalar(conn, done) >= jobs, 600, f"{jobs} jobs", interval=0.005)
            elapsed = time.perf_counter() - started
            failed = scalar(conn, "SELECT count(*) FROM pggit.backup_jobs WHERE status <> 'completed'")
            assert failed == 0, f"{failed} jobs did not complete"
        return jobs / elapsed
    finally:
        service.stop()


def run(ctx: Context) -> list[Row]:
    jobs = 200 if ctx.quick else 2000
    dbname = ctx.new_database("pgbench")
    rows = []
    for workers in (1, 2, 4, 8):
        limit = pgbench_tps(ctx, dbname, workers, jobs, spawn=True)
        bare = pgbench_tps(ctx, dbname, workers, jobs, spawn=False)
        ours = supervisor_rate(ctx, workers, jobs)
        goal = 0.5 if workers == 4 else None
        rows.append(Row("1 throughput", f"{workers} workers vs pgbench+/bin/true", f"{limit:.0f} jobs/s",
                        f"{ours:.0f} jobs/s", ours / limit, goal, higher_is_better=True))  # fmt: skip
        rows.append(Row("1 throughput", f"{workers} workers vs bare SQL cycle", f"{bare:.0f} jobs/s",
                        f"{ours:.0f} jobs/s", ours / bare))  # fmt: skip
    return rows
