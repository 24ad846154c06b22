"""Where the CPU of a no-op job goes: a real supervisor's workers drain /bin/true jobs (as figure
1 does) while the CPU time of each kind of process is read before and after, from /proc:

- the workers themselves (Python: psycopg2, the runner, logging) and the supervisor;
- the tools: setpriv + /bin/true, the workers' reaped children (children_user + children_system);
- PostgreSQL's backends of the queue database (the claim, record_command and finish), and the
  rest of the cluster (walwriter, checkpointer, the bench's own poller's backend);
- the whole machine (/proc/stat), so what no process above accounts for shows too.

    .venv/bin/python bench/cpu_split.py [--workers 4] [--jobs 2000]

Prints ms of CPU per job for each; docs/benchmarks.md uses it to say why figure 1's goal is out
of reach on 2 cores.
"""

from __future__ import annotations

import argparse
import time

import psutil
from common import Supervisor, admin, end_context, enqueue_custom, scalar, start_context, wait_until
from throughput import pgbench_tps


def _cpu(proc: psutil.Process, children: bool = False) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


def _sample(supervisor_pid: int, postmaster_pid: int, dbname: str) -> dict[str, float]:
    supervisor = psutil.Process(supervisor_pid)
    workers = supervisor.children()
    backends, cluster = 0.0, _cpu(psutil.Process(postmaster_pid))
    for proc in psutil.Process(postmaster_pid).children():
        try:
            mine = f" {dbname} " in " ".join(proc.cmdline()) + " "
        except psutil.Error:
            continue
        if mine:
            backends += _cpu(proc)
        else:
            cluster += _cpu(proc)
    own = sum(_cpu(w) for w in workers)
    tools = sum(_cpu(w, children=True) - _cpu(w) for w in workers)
    return {
        "workers (Python)": own,
        "tools (setpriv + /bin/true)": tools,
        "supervisor": _cpu(supervisor),
        "PostgreSQL backends of the queue": backends,
        "rest of the cluster": cluster,
        "machine (/proc/stat, busy)": _busy(),
    }


def _busy() -> float:
    total = psutil.cpu_times()
    return total.user + total.system + total.nice + total.irq + total.softirq


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    ctx = start_context(quick=True)
    try:
        limit_db = ctx.new_database("cpulimit")
        busy, started = _busy(), time.perf_counter()
        limit = pgbench_tps(ctx, limit_db, args.workers, args.jobs, spawn=True)
        limit_cpu = (_busy() - busy) * 1e3 / args.jobs  # includes pgbench's set-up of its table
        limit_wall = time.perf_counter() - started
        dbname = ctx.new_database("cpusplit")
        with admin(ctx.dsn(dbname)) as conn:  # the workers' sessions count their functions' time
            conn.cursor().execute(f"ALTER DATABASE {dbname} SET track_functions = 'all'")
        service = Supervisor(ctx, "cpusplit", dsn=ctx.dsn(dbname), workers=args.workers).start()
        try:
            service.wait_for_log("worker started", args.workers)
            assert service.proc is not None
            with admin(ctx.dsn(dbname)) as conn:
                workers = "SELECT count(*) FROM pggit.backup_workers"
                wait_until(lambda: scalar(conn, workers) >= args.workers, 30, "workers")
                postmaster = int((ctx.cluster.data / "postmaster.pid").read_text().split()[0])
                time.sleep(1.0)
                conn.autocommit = False
                enqueue_custom(conn, "/bin/true", args.jobs)
                before = _sample(service.proc.pid, postmaster, dbname)
                conn.commit()
                started = time.perf_counter()
                conn.autocommit = True
                done = "SELECT count(*) FROM pggit.backup_jobs WHERE status = 'completed'"
                wait_until(lambda: scalar(conn, done) >= args.jobs, 600, f"{args.jobs} jobs", interval=0.05)
                elapsed = time.perf_counter() - started
                after = _sample(service.proc.pid, postmaster, dbname)
        finally:
            service.stop()  # a backend's function counts are flushed for certain when it exits
        with admin(ctx.dsn(dbname)) as conn:
            time.sleep(1.0)
            cur = conn.cursor()
            cur.execute("""SELECT schemaname || '.' || funcname, calls, self_time, total_time
                             FROM pg_stat_user_functions ORDER BY self_time DESC LIMIT 15""")
            functions = cur.fetchall()
    finally:
        end_context(ctx)
    available = elapsed * (psutil.cpu_count() or 1) * 1e3 / args.jobs
    print(f"{args.jobs} jobs, {args.workers} workers, {args.jobs / elapsed:.0f} jobs/s, {elapsed:.2f} s wall, "
          f"{psutil.cpu_count()} cores: {available:.2f} ms of CPU available per job")  # fmt: skip
    print(f"the limit (pgbench, {args.workers} clients, claim + \\shell /bin/true + complete): {limit:.0f} jobs/s, "
          f"machine busy {limit_cpu:.2f} ms CPU/job (table set-up included, {limit_wall:.1f} s)")  # fmt: skip
    print(f"{'where':36} {'ms CPU/job':>10}")
    for key in before:
        print(f"{key:36} {(after[key] - before[key]) * 1e3 / args.jobs:10.2f}")
    print(f"\n{'function (track_functions)':44} {'calls':>7} {'self ms/job':>11} {'total ms/job':>12}")
    for name, calls, self_time, total in functions:
        print(f"{name:44} {calls:7} {self_time / args.jobs:11.3f} {total / args.jobs:12.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
