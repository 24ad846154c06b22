"""Speed and memory of the two hot paths, each against a baseline measured in the same run:

- the queue: claim + finish of a job through pggit.claim_backup_job / finish_backup_job (with
  validation, target exclusivity, claim token, lease, backup-row trigger) against the bare
  SKIP LOCKED claim-and-complete a hand-written queue would do on a plain table;
- the runner: run_tool (own session, scrubbed env, PDEATHSIG, bounded capture, ticks) against
  subprocess.run on the same command; and its memory while a tool writes 200 MB of output,
  against the size of the output itself.

    .venv/bin/python bench/bench.py [--dsn DSN] [--jobs N]

bench/run.py runs these too, as figure 0, on its own throwaway cluster (`run(ctx)` below).

Targets (see bench/README.md): queue ratio <= 4, runner ratio <= 6, capture memory growth
<= 2 MB for 200 MB of output.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import Row, ms  # noqa: E402  (bench/ is on sys.path: the script's own directory)

from pggit_supervisor import schema  # noqa: E402
from pggit_supervisor.runner import RunSpec, run_tool  # noqa: E402


def timed(fn, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def bench_queue(admin_dsn: str, jobs: int) -> tuple[float, float]:
    name = "pggit_bench_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg2.extensions.make_dsn(admin_dsn, dbname=name)
    try:
        schema.install(dsn, log=lambda *_: None)
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("""CREATE TABLE plain_jobs (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'queued',
                       locked_by text, created_at timestamptz NOT NULL DEFAULT now());
                       CREATE INDEX ON plain_jobs (created_at) WHERE status = 'queued'""")
        cur.execute("INSERT INTO plain_jobs (status) SELECT 'queued' FROM generate_series(1, %s)", (jobs,))
        for i in range(jobs):
            cur.execute("SELECT pggit.backup_pgbackrest('full', 'main', %s)", (f"s{i}",))

        def plain():
            cur.execute("""UPDATE plain_jobs SET status = 'running', locked_by = 'w' WHERE id = (
                             SELECT id FROM plain_jobs WHERE status = 'queued' ORDER BY created_at
                             FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id""")
            job_id = cur.fetchone()[0]
            cur.execute("UPDATE plain_jobs SET status = 'completed' WHERE id = %s AND status = 'running'", (job_id,))

        def ours():
            cur.execute("SELECT job_id, claim_token FROM pggit.claim_backup_job('w', NULL, 60)")
            job_id, token = cur.fetchone()
            cur.execute("SELECT pggit.finish_backup_job(%s, %s, 'ok', '{\"backup_size\": 1}', '{}')", (job_id, token))

        baseline = timed(plain, jobs)
        measured = timed(ours, jobs)
        conn.close()
        return baseline, measured
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def bench_runner(repeat: int) -> tuple[float, float]:
    argv = ["/bin/true"]
    baseline = timed(lambda: subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True), repeat)
    spec = RunSpec(argv=tuple(argv), env={}, timeout=10)
    measured = timed(lambda: run_tool(spec, on_tick=lambda: None), repeat)
    return baseline, measured


def bench_capture(megabytes: int) -> tuple[int, int]:
    """(bytes of output, growth of this process's peak RSS while capturing it)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    spec = RunSpec(argv=("/usr/bin/head", "-c", str(megabytes << 20), "/dev/zero"), env={}, timeout=60)
    result = run_tool(spec)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result.stdout.total_bytes, after - before


def run(ctx) -> list:
    """Figure 0 of bench/run.py: the three hot paths on the run's own cluster."""
    jobs = 500 if ctx.quick else 2000
    base, ours = bench_queue(ctx.cluster.dsn, jobs)
    rows = [Row("0 hot paths", "claim + finish one job vs bare SKIP LOCKED", ms(base), ms(ours), ours / base, 4.0)]
    base, ours = bench_runner(200)
    rows.append(Row("0 hot paths", "run_tool /bin/true vs subprocess.run", ms(base), ms(ours), ours / base, 6.0))
    size, growth = bench_capture(200)
    rows.append(Row("0 hot paths", "capture 200 MB of output: RSS growth", f"{size >> 20} MB output",
                    f"{growth / 1e6:.1f} MB", growth / size, 0.01))  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    base, ours = bench_queue(args.dsn, args.jobs)
    rows.append(("claim + finish one job", f"{base * 1e3:.2f} ms", f"{ours * 1e3:.2f} ms", ours / base, 4.0))
    base, ours = bench_runner(200)
    rows.append(("start and reap /bin/true", f"{base * 1e3:.2f} ms", f"{ours * 1e3:.2f} ms", ours / base, 6.0))
    size, growth = bench_capture(200)
    rows.append(
        (
            "capture 200 MB of output",
            f"{size >> 20} MB output",
            f"{growth / 1e6:.1f} MB RSS growth",
            growth / size,
            0.01,
        )
    )
    print(f"{'what':28} {'baseline':>16} {'pggit-supervisor':>20} {'ratio':>8} {'target':>8}  ok")
    failed = 0
    for what, base_text, ours_text, ratio, target in rows:
        ok = ratio <= target
        failed += not ok
        print(f"{what:28} {base_text:>16} {ours_text:>20} {ratio:8.3f} {target:8.2f}  {'yes' if ok else 'NO'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
