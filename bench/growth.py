"""Figure 6, growth:

- claim + finish latency (pggit.claim_backup_job + finish_backup_job, one job at a time, as
  bench/bench.py measures it) with 1k, 100k and 1M finished jobs in the table, against the 1k case;
- `pggit-supervisor status --check` (the whole command: interpreter, config of N retention targets,
  queries) against the same command with one target, at 100k (quick) or 1M backups. It runs one
  query per target that reads every backup, so 10k targets are not run (hours): the per-target
  cost is measured over a few targets and extrapolated. Queue.metrics_snapshot (what the metrics
  file is written from; one pass over all targets) at the full size, 1k targets. Goal 1 s each.

The population: each target is one pgBackRest stanza whose first backup went through the real API
(queue, claim, finish); the rest are copies of those rows (new ids and names, older timestamps)
inserted with the triggers off (session_replication_role = replica), so the table holds what a
long-lived queue holds without a day of real backups.
"""

from __future__ import annotations

import subprocess
import time

import yaml
from common import CLI, ROOT, Context, Row, admin, ms, scalar

from pggit_supervisor.queue import Queue

SEED = """
DO $$
DECLARE r record;
BEGIN
  FOR i IN %(first)s..%(last)s LOOP
    PERFORM pggit.backup_pgbackrest('full', 'main', %(prefix)s || i);
    SELECT * INTO r FROM pggit.claim_backup_job('seed', NULL, 60);
    PERFORM pggit.finish_backup_job(r.job_id, r.claim_token, 'ok', '{"backup_size": 1}', '{}');
  END LOOP;
END $$"""

# the columns whose copies differ; every other column is copied as it is
NEW_VALUES = {
    "pggit.backups": {"backup_id": "md5(r.backup_id::text || g)::uuid", "backup_name": "r.backup_name || '-' || g"},
    "pggit.backup_jobs": {"job_id": "md5(r.job_id::text || g)::uuid", "backup_id": "md5(r.backup_id::text || g)::uuid"},
}


def seed(conn, first: int, last: int) -> None:
    conn.cursor().execute(SEED, {"first": first, "last": last, "prefix": "s"})


def copy(conn, first: int, last: int) -> None:
    """Copies g = first..last of every seed target's first backup and job (column by column: a
    jsonb round trip per row was fifty times slower)."""
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS seeds")
    cur.execute("""CREATE TEMP TABLE seeds AS SELECT DISTINCT j.backup_id FROM pggit.backup_jobs j
                    WHERE j.status = 'completed' AND j.locked_by = 'seed'""")
    cur.execute("SET session_replication_role = replica")
    for table, new in NEW_VALUES.items():
        cur.execute(
            """SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0
                 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum""",
            (table,),
        )
        columns = [row[0] for row in cur.fetchall()]
        values = ", ".join(new.get(column, f"r.{column}") for column in columns)
        cur.execute(
            f"""INSERT INTO {table} ({", ".join(columns)}) SELECT {values}
                  FROM {table} r JOIN seeds USING (backup_id), generate_series(%s, %s) g""",
            (first, last),
        )
    cur.execute("RESET session_replication_role")
    cur.execute("VACUUM ANALYZE pggit.backups")
    cur.execute("VACUUM ANALYZE pggit.backup_jobs")


def claim_finish(conn, level: str, jobs: int) -> float:
    cur = conn.cursor()
    for i in range(jobs):
        cur.execute("SELECT pggit.backup_pgbackrest('full', 'main', %s)", (f"g{level}-{i}",))
    started = time.perf_counter()
    for _ in range(jobs):
        cur.execute("SELECT job_id, claim_token FROM pggit.claim_backup_job('w', NULL, 60)")
        job_id, token = cur.fetchone()
        cur.execute("SELECT pggit.finish_backup_job(%s, %s, 'ok', '{\"backup_size\": 1}', '{}')", (job_id, token))
    return (time.perf_counter() - started) / jobs


def status_check(ctx: Context, dbname: str, targets: int) -> float:
    config = {
        "dsn": ctx.dsn(dbname),
        "worker_id": "growth",
        "tools": {"pgbackrest": {}},
        "retention": [{"target": {"tool": "pgbackrest", "stanza": f"s{i}"}, "keep_last": 4} for i in range(targets)],
    }
    path = ctx.directory("status") / f"status-{targets}.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    done = subprocess.run([*CLI, "status", "--check", "-c", str(path)], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    assert done.returncode in (0, 1, 2), f"status --check exit {done.returncode}: {done.stderr[-2000:]}"
    return elapsed


def run(ctx: Context) -> list[Row]:
    jobs = 100 if ctx.quick else 300
    dbname = ctx.new_database("growth")
    rows = []
    with admin(ctx.dsn(dbname)) as conn:
        seed(conn, 0, 999)
        base = claim_finish(conn, "1k", jobs)
        rows.append(Row("6 growth", "claim + finish, 1k finished jobs", ms(base), ms(base), 1.0))
        levels = [("100k", 99)] + ([] if ctx.quick else [("1M", 999)])
        done = 0
        for label, copies in levels:
            copy(conn, done + 1, copies)
            done = copies
            count = scalar(conn, "SELECT count(*) FROM pggit.backup_jobs")
            took = claim_finish(conn, label, jobs)
            rows.append(Row("6 growth", f"claim + finish, {count // 1000}k finished jobs", ms(base), ms(took),
                            took / base, 1.5))  # fmt: skip
        # one query per watched target, each reading every backup (see docs/benchmarks.md): a
        # few targets measured, the per-target cost extrapolated to the goal's 10k
        targets = 5 if ctx.quick else 3
        backups = scalar(conn, "SELECT count(*) FROM pggit.backups")
        one = status_check(ctx, dbname, 1)
        many = status_check(ctx, dbname, targets)
        per_target = max(many - one, 0.0) / (targets - 1)
        rows.append(Row("6 growth", f"status --check, {targets} targets, {backups // 1000}k backups",
                        f"{one:.2f} s (1 target)", f"{many:.2f} s", many / 1.0, 1.0))  # fmt: skip
        rows.append(Row("6 growth", f"status --check, 10k targets (extrapolated), {backups // 1000}k backups",
                        f"{per_target * 1e3:.0f} ms/target", f"{one + per_target * 9999:.0f} s",
                        (one + per_target * 9999) / 1.0, 1.0))  # fmt: skip
        queue = Queue(conn)
        started = time.perf_counter()
        snapshot = queue.metrics_snapshot()
        took = time.perf_counter() - started
        conn.rollback()
        conn.autocommit = True
        rows.append(Row("6 growth", f"metrics snapshot, {len(snapshot.targets)} targets, {backups // 1000}k backups",
                        "goal 1 s", f"{took:.2f} s", took / 1.0, 1.0))  # fmt: skip
    return rows
