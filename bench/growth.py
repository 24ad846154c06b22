"""Figure 6, growth:

- claim + finish latency (pggit.claim_backup_job + finish_backup_job, one job at a time, as
  bench/bench.py measures it) with 1k, 100k and 1M finished jobs in the table, against the 1k case;
- `pggit-supervisor status --check` (the whole command: interpreter, a config of 10k retention
  targets, its queries) at 1M backups (100k with --quick), against the same command with one
  target; goal 1 s;
- Queue.metrics_snapshot (what the metrics file is written from; schema/022's
  backup_target_summary over every target) at the same size; goal 1 s.

The population: three backups go through the real API (queue, claim, finish or fail: a verified,
an unverified and a permanently failed pgBackRest full), and are the templates of the rest,
built set-based (one INSERT ... SELECT from generate_series per table, triggers off:
session_replication_role = replica) across 10k stanzas s0..s9999, with the rows schema/023's
job trigger would have written into backup_target_identity filled the same way. 1M backups and
their jobs take about 45 s on 2 cores (the per-seed copy it replaces took more than 6.5 min).
"""

from __future__ import annotations

import subprocess
import sys
import time

import yaml
from common import CLI, ROOT, Context, Row, admin, ms, scalar

from pggit_supervisor.queue import Queue

# The row shapes the population copies: one backup per kind, each through the real API (queue,
# claim, finish or fail), on a stanza of its own. Their jobs are found again by locked_by.
TEMPLATES = {"verified": "tpl-verified", "unverified": "tpl-unverified", "failed": "tpl-failed"}
SEED = """
DO $$
DECLARE r record;
BEGIN
  PERFORM pggit.backup_pgbackrest('full', 'main', 'tpl-verified');
  SELECT * INTO r FROM pggit.claim_backup_job('seed', NULL, 60);
  PERFORM pggit.finish_backup_job(r.job_id, r.claim_token, 'ok', '{"backup_size": 1, "verified": true}', '{}');
  PERFORM pggit.backup_pgbackrest('full', 'main', 'tpl-unverified');
  SELECT * INTO r FROM pggit.claim_backup_job('seed', NULL, 60);
  PERFORM pggit.finish_backup_job(r.job_id, r.claim_token, 'ok', '{"backup_size": 1}', '{}');
  PERFORM pggit.backup_pgbackrest('full', 'main', 'tpl-failed');
  SELECT * INTO r FROM pggit.claim_backup_job('seed', NULL, 60);
  PERFORM pggit.fail_claimed_backup_job(r.job_id, r.claim_token, 'pgbackrest: exit 56', false);
END $$"""

# Backup n of the population belongs to stanza s<n % targets> and copies the template of its kind
# (1 in 20 failed, 1 in 4 unverified, the rest verified), one day older per round of targets: a
# fleet of 10k stanzas backed up daily for 100 days holds 1M backups.
# The columns whose copies differ; every other column is copied from the template as it is.
STANZA = "'s' || (g.n % :targets)"
AT = "now() - (:total - g.n) * interval '86400 s' / :targets"
NEW_VALUES = {
    "pggit.backups": {
        "backup_id": "md5('growth-backup-' || g.n)::uuid",
        "backup_name": "r.backup_name || '-' || g.n",
        "location": f"'pgbackrest://' || {STANZA}",
        "metadata": f"jsonb_set(r.metadata, '{{params,stanza}}', to_jsonb({STANZA}))",
        "created_at": f"CASE WHEN r.created_at IS NOT NULL THEN {AT} END",
        "started_at": f"CASE WHEN r.started_at IS NOT NULL THEN {AT} END",
        "completed_at": f"CASE WHEN r.completed_at IS NOT NULL THEN {AT} END",
        "verified_at": f"CASE WHEN r.verified_at IS NOT NULL THEN {AT} END",
    },
    "pggit.backup_jobs": {
        "job_id": "md5('growth-job-' || g.n)::uuid",
        "backup_id": "md5('growth-backup-' || g.n)::uuid",
        "command": f"replace(r.command, '--stanza=' || (r.spec #>> '{{params,stanza}}'), '--stanza=' || {STANZA})",
        "spec": f"jsonb_set(r.spec, '{{params,stanza}}', to_jsonb({STANZA}))",
        "target": f"'pgbackrest:' || {STANZA}",
        "created_at": f"CASE WHEN r.created_at IS NOT NULL THEN {AT} END",
        "started_at": f"CASE WHEN r.started_at IS NOT NULL THEN {AT} END",
        "completed_at": f"CASE WHEN r.completed_at IS NOT NULL THEN {AT} END",
        "updated_at": f"CASE WHEN r.updated_at IS NOT NULL THEN {AT} END",
        "heartbeat_at": f"CASE WHEN r.heartbeat_at IS NOT NULL THEN {AT} END",
    },
}
# which template backup n copies (its stanza)
KIND = "CASE WHEN g.n % 20 = 7 THEN 'tpl-failed' WHEN g.n % 4 = 1 THEN 'tpl-unverified' ELSE 'tpl-verified' END"


def seed(conn) -> None:
    """The templates through the real API, then kept aside (temp tables keyed by their stanza)."""
    cur = conn.cursor()
    cur.execute(SEED)
    cur.execute("""CREATE TEMP TABLE tpl_backups AS SELECT b.metadata #>> '{params,stanza}' AS kind, b.*
                     FROM pggit.backups b WHERE b.metadata #>> '{params,stanza}' LIKE 'tpl-%'""")
    cur.execute("""CREATE TEMP TABLE tpl_jobs AS SELECT j.spec #>> '{params,stanza}' AS kind, j.*
                     FROM pggit.backup_jobs j WHERE j.spec #>> '{params,stanza}' LIKE 'tpl-%'""")


def populate(conn, first: int, last: int, targets: int, total: int) -> None:
    """Backups and jobs n = first..last, set-based: one INSERT ... SELECT from generate_series per
    table with the triggers off (session_replication_role = replica: no trigger, no FK check), and
    the target identity (schema/023) the job trigger would have written, filled the same way; then
    the targets' rows (schema/026) rebuilt from them."""
    cur = conn.cursor()
    cur.execute("SET session_replication_role = replica")

    def sized(sql: str) -> str:
        return sql.replace(":targets", str(int(targets))).replace(":total", str(int(total)))

    for table, new in NEW_VALUES.items():
        cur.execute(
            """SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0
                 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum""",
            (table,),
        )
        columns = [row[0] for row in cur.fetchall()]
        values = sized(", ".join(new.get(column, f"r.{column}") for column in columns))
        templates = "tpl_backups" if table == "pggit.backups" else "tpl_jobs"
        cur.execute(
            f"""INSERT INTO {table} ({", ".join(columns)}) SELECT {values}
                  FROM generate_series({int(first)}, {int(last)}) g(n) JOIN {templates} r ON r.kind = {KIND}"""
        )
    cur.execute(
        sized(f"""INSERT INTO pggit.backup_target_identity (backup_id, target)
            SELECT md5('growth-backup-' || g.n)::uuid, jsonb_build_object('tool', 'pgbackrest', 'stanza', {STANZA})
              FROM generate_series({int(first)}, {int(last)}) g(n)""")
    )
    cur.execute("RESET session_replication_role")
    # the per-target rows (schema/026) the triggers would have kept, recomputed from what is there
    cur.execute("SELECT pggit._tally_rebuild()")
    for table in ("backups", "backup_jobs", "backup_target_identity", "backup_target_tally"):
        cur.execute(f"VACUUM ANALYZE pggit.{table}")


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
    targets = 10_000
    total = 100_000 if ctx.quick else 1_000_000
    dbname = ctx.new_database("growth")
    rows = []
    with admin(ctx.dsn(dbname)) as conn:
        seed(conn)
        done = 0
        base = 0.0
        for label, size in [("1k", 1_000), ("100k", 100_000), ("1M", 1_000_000)]:
            if size > total:
                break
            started = time.perf_counter()
            populate(conn, done, size - 1, targets, total)
            done = size
            count = scalar(conn, "SELECT count(*) FROM pggit.backup_jobs")
            print(f"growth: {count} jobs after {time.perf_counter() - started:.0f}s of population", file=sys.stderr)
            took = claim_finish(conn, label, jobs)
            base = base or took
            rows.append(Row("6 growth", f"claim + finish, {label} finished jobs ({count})", ms(base), ms(took),
                            took / base, None if label == "1k" else 1.5))  # fmt: skip
        backups = scalar(conn, "SELECT count(*) FROM pggit.backups")
        one = status_check(ctx, dbname, 1)
        many = status_check(ctx, dbname, targets)
        rows.append(Row("6 growth", f"status --check, {targets // 1000}k targets, {backups // 1000}k backups",
                        f"{one:.2f} s (1 target)", f"{many:.2f} s", many / 1.0, 1.0))  # fmt: skip
        queue = Queue(conn)
        started = time.perf_counter()
        snapshot = queue.metrics_snapshot()
        took = time.perf_counter() - started
        conn.rollback()
        conn.autocommit = True
        rows.append(Row("6 growth", f"metrics snapshot, {len(snapshot.targets)} targets, {backups // 1000}k backups",
                        "goal 1 s", f"{took:.2f} s", took / 1.0, 1.0))  # fmt: skip
    return rows
