"""Figure 4, overhead on real backups: the time to a completed, verified backup through the
supervisor (from the commit that queues it to the job completed, seen by polling every 10 ms)
against the same tool run directly with the same verification, both as the postgres OS user:

- pg_dump --format=custom of the queue database filled by `pgbench -i` (scale 20, about 300 MB;
  --quick scale 2), then pg_restore --file=/dev/null (what the supervisor verifies with);
- pg_basebackup --format=plain --wal-method=stream --checkpoint=fast --manifest-checksums=SHA256,
  then pg_verifybackup;
- pgBackRest full (`backup --type=full --start-fast`, then `verify`, as the adapter runs them) of
  a cluster of the figure's own that archives into a stanza (the bench cluster does not archive),
  filled the same way. The supervisor's side also runs the adapter's `info` calls and the
  manifest read: that is the overhead measured.

Like for like: every timed run starts after `sync` (so no run pays for writing back what the
previous one left in the page cache), and after each pair both outputs are removed (the direct
run's used to be removed at once, before the kernel wrote it back, while the supervisor's stayed
and was written back during the following runs). Runs alternate (direct, supervisor) so a burst of
other load hits both; the median of each is compared.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

from common import BIN, PGBENCH, Context, Row, Supervisor, admin, scalar, wait_until

from helpers.cluster import as_postgres
from helpers.stanza import PGBACKREST, stanza_cluster


def _fill(port: int, dsn: str, dbname: str, scale: int) -> str:
    as_postgres([PGBENCH, "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p", str(port), dbname])
    with admin(dsn) as conn:
        return scalar(conn, "SELECT pg_size_pretty(pg_database_size(current_database()))")


def _settled() -> float:
    """The start of a timed run: after the page cache's dirty pages are on disk."""
    os.sync()
    return time.perf_counter()


def _empty(out: Path) -> None:
    """Both sides' outputs of a round, removed together (untimed)."""
    for entry in out.iterdir():
        subprocess.run(["rm", "-rf", "--", str(entry)], check=False)


def _direct_dump(ctx: Context, dbname: str, out: Path) -> float:
    target = str(out / "direct.dump")
    conn = ["-h", "127.0.0.1", "-p", str(ctx.cluster.port), "-U", "postgres"]
    started = _settled()
    as_postgres([str(BIN / "pg_dump"), "--format=custom", f"--file={target}", "--no-password", *conn, dbname])
    as_postgres([str(BIN / "pg_restore"), "--file=/dev/null", target])
    return time.perf_counter() - started


def _direct_basebackup(ctx: Context, out: Path) -> float:
    target = out / "direct-base"
    started = _settled()
    as_postgres([str(BIN / "pg_basebackup"), f"--pgdata={target}", "--format=plain", "--wal-method=stream",
                 "--checkpoint=fast", "--manifest-checksums=SHA256", "--no-password", "-h", "127.0.0.1",
                 "-p", str(ctx.cluster.port), "-U", "postgres"])  # fmt: skip
    as_postgres([str(BIN / "pg_verifybackup"), str(target)])
    return time.perf_counter() - started


def _direct_pgbackrest(conf: Path) -> float:
    base = [PGBACKREST, f"--config={conf}", "--stanza=bench"]
    started = _settled()
    as_postgres([*base, "--type=full", "--start-fast", "--log-level-console=info", "backup"])
    as_postgres([*base, "--output=text", "--verbose", "verify"])
    return time.perf_counter() - started


def _through(conn, sql: str, params: tuple) -> float:
    os.sync()  # as _settled, before the commit that queues the job
    with conn.cursor() as cur:
        cur.execute(sql, params)
        backup_id = cur.fetchone()[0]
    started = time.perf_counter()
    query = "SELECT status, last_error FROM pggit.backup_jobs WHERE backup_id = %s"

    def ended():
        with conn.cursor() as cur:
            cur.execute(query, (backup_id,))
            row = cur.fetchone()
        return row if row[0] in ("completed", "failed", "permanently_failed") else None

    status, error = wait_until(ended, 1800, "the backup", interval=0.01)
    took = time.perf_counter() - started
    assert status == "completed", f"backup {backup_id}: {status} {error}"
    return took


def _compare(what: str, direct: list[float], ours: list[float]) -> Row:
    d, o = statistics.median(direct), statistics.median(ours)
    spread = f" ({min(ours) / max(direct):.2f}-{max(ours) / min(direct):.2f})" if len(direct) > 1 else ""
    return Row("4 overhead", what, f"{d:.2f} s direct", f"{o:.2f} s{spread}", o / d, 1.05)


def run(ctx: Context) -> list[Row]:
    rounds = 1 if ctx.quick else 5  # medians of 5: pg_basebackup varies with the disk write-back
    scale = 2 if ctx.quick else 20
    dbname = ctx.new_database("overhead")
    size = _fill(ctx.cluster.port, ctx.dsn(dbname), dbname, scale)
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
                _empty(out)
            rows.append(_compare(f"pg_dump custom + pg_restore check, {size}", direct, ours))
            direct, ours = [], []
            options = '{"checkpoint": "fast", "format": "plain"}'
            for _ in range(rounds):
                direct.append(_direct_basebackup(ctx, out))
                ours.append(_through(conn, "SELECT pggit.backup_pg_basebackup('main', %s, %s)", (str(out), options)))
                _empty(out)
            rows.append(_compare("pg_basebackup plain + pg_verifybackup", direct, ours))
    finally:
        service.stop()
        subprocess.run(["rm", "-rf", str(out)], check=False)
    rows.append(_pgbackrest(ctx, rounds, scale))
    return rows


def _pgbackrest(ctx: Context, rounds: int, scale: int) -> Row:
    """A cluster of its own archiving into stanza `bench` (repo1-retention-full=1, so each full
    expires the one before and verify reads one backup set on either side)."""
    with stanza_cluster("bench", {1: 1}, extra_conf="shared_buffers = 256MB\n") as stanza:
        size = _fill(stanza.cluster.port, stanza.cluster.dsn, "postgres", scale)
        tools = {"pgbackrest": {"path": PGBACKREST, "run_as": "postgres", "config": str(stanza.conf), "timeout": 1800}}
        service = Supervisor(ctx, "overhead-backrest", dsn=stanza.cluster.dsn, tools=tools, lease_seconds=60,
                             heartbeat_interval=10).start()  # fmt: skip
        try:
            service.wait_for_log("worker started")
            with admin(stanza.cluster.dsn) as conn:
                direct, ours = [], []
                for _ in range(rounds):
                    direct.append(_direct_pgbackrest(stanza.conf))
                    ours.append(_through(conn, "SELECT pggit.backup_pgbackrest('full', 'main', 'bench')", ()))
            return _compare(f"pgBackRest full + verify, {size}", direct, ours)
        finally:
            service.stop()
