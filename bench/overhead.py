"""Figure 4, overhead on real backups: the time to a completed, verified backup through the
supervisor (from the commit that queues it to the job completed, seen by polling every 10 ms)
against the same tool run directly with the same verification, both as the postgres OS user:

- pg_dump --format=custom of the queue database filled by `pgbench -i` (scale 20, about 300 MB;
  --quick scale 2), then pg_restore --file=/dev/null (what the supervisor verifies with);
- pg_basebackup --format=plain --wal-method=stream --checkpoint=fast --manifest-checksums=SHA256,
  then pg_verifybackup.

Runs alternate (direct, supervisor) so a burst of other load hits both; the median of each is
compared. pgBackRest full is not measured yet (see docs/benchmarks.md).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from pathlib import Path

from common import BIN, PGBENCH, Context, Row, Supervisor, admin, scalar, wait_until

from helpers.cluster import as_postgres


def _fill(ctx: Context, dbname: str, scale: int) -> str:
    as_postgres([PGBENCH, "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p", str(ctx.cluster.port), dbname])
    with admin(ctx.dsn(dbname)) as conn:
        return scalar(conn, "SELECT pg_size_pretty(pg_database_size(current_database()))")


def _direct_dump(ctx: Context, dbname: str, out: Path) -> float:
    started = time.perf_counter()
    target = str(out / "direct.dump")
    conn = ["-h", "127.0.0.1", "-p", str(ctx.cluster.port), "-U", "postgres"]
    as_postgres([str(BIN / "pg_dump"), "--format=custom", f"--file={target}", "--no-password", *conn, dbname])
    as_postgres([str(BIN / "pg_restore"), "--file=/dev/null", target])
    took = time.perf_counter() - started
    Path(target).unlink()
    return took


def _direct_basebackup(ctx: Context, out: Path) -> float:
    target = out / "direct-base"
    started = time.perf_counter()
    as_postgres([str(BIN / "pg_basebackup"), f"--pgdata={target}", "--format=plain", "--wal-method=stream",
                 "--checkpoint=fast", "--manifest-checksums=SHA256", "--no-password", "-h", "127.0.0.1",
                 "-p", str(ctx.cluster.port), "-U", "postgres"])  # fmt: skip
    as_postgres([str(BIN / "pg_verifybackup"), str(target)])
    took = time.perf_counter() - started
    shutil.rmtree(target)
    return took


def _through(conn, sql: str, params: tuple) -> float:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        backup_id = cur.fetchone()[0]
    started = time.perf_counter()
    query = "SELECT status, last_error FROM pggit.backup_jobs WHERE backup_id = %s"

    def ended():
        with conn.cursor() as cur:
            cur.execute(query, (backup_id,))
            row = cur.fetchone()
        return row if row[0] in ("completed", "failed") else None

    status, error = wait_until(ended, 1800, "the backup", interval=0.01)
    took = time.perf_counter() - started
    assert status == "completed", f"backup {backup_id}: {status} {error}"
    return took


def run(ctx: Context) -> list[Row]:
    rounds = 1 if ctx.quick else 3
    dbname = ctx.new_database("overhead")
    size = _fill(ctx, dbname, 2 if ctx.quick else 20)
    out = ctx.directory("backups")
    tools = {
        "pg_dump": {"path": str(BIN / "pg_dump"), "run_as": "postgres", "allowed_output_dirs": [str(out)]},
        "pg_basebackup": {"path": str(BIN / "pg_basebackup"), "run_as": "postgres", "allowed_output_dirs": [str(out)]},
    }
    service = Supervisor(ctx, "overhead", dsn=ctx.dsn(dbname), tools=tools, lease_seconds=60,
                         heartbeat_interval=10).start()  # fmt: skip
    rows = []
    try:
        service.wait_for_log("worker started")
        with admin(ctx.dsn(dbname)) as conn:
            direct, ours = [], []
            for _ in range(rounds):
                direct.append(_direct_dump(ctx, dbname, out))
                ours.append(_through(conn, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(out),)))
            d, o = statistics.median(direct), statistics.median(ours)
            rows.append(Row("4 overhead", f"pg_dump custom + pg_restore check, {size}", f"{d:.2f} s direct",
                            f"{o:.2f} s", o / d, 1.05))  # fmt: skip
            direct, ours = [], []
            options = '{"checkpoint": "fast", "format": "plain"}'
            for _ in range(rounds):
                direct.append(_direct_basebackup(ctx, out))
                ours.append(_through(conn, "SELECT pggit.backup_pg_basebackup('main', %s, %s)", (str(out), options)))
            d, o = statistics.median(direct), statistics.median(ours)
            rows.append(Row("4 overhead", "pg_basebackup plain + pg_verifybackup", f"{d:.2f} s direct",
                            f"{o:.2f} s", o / d, 1.05))  # fmt: skip
    finally:
        service.stop()
        subprocess.run(["rm", "-rf", str(out)], check=False)
    return rows
