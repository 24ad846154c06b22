"""Where a worker's time goes while it drains no-op jobs: one worker of a real supervisor drains
/bin/true jobs while py-spy samples it (`pip install py-spy` into the venv first).

    .venv/bin/python bench/profile_worker.py [--jobs N] [--seconds S] [--out FILE]

Prints py-spy's top functions (--format raw written to FILE for a flame graph).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import Supervisor, admin, end_context, enqueue_custom, scalar, start_context, wait_until


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", default="/tmp/pggit-worker-profile.txt")
    parser.add_argument("--idle", action="store_true", help="wall-clock: count waiting too, not only CPU")
    args = parser.parse_args()
    ctx = start_context(quick=True)
    try:
        dbname = ctx.new_database("profile")
        service = Supervisor(ctx, "profile", dsn=ctx.dsn(dbname), workers=1).start()
        try:
            service.wait_for_log("worker started")
            with admin(ctx.dsn(dbname)) as conn:
                wait_until(lambda: scalar(conn, "SELECT count(*) FROM pggit.backup_workers") >= 1, 30, "worker")
                time.sleep(1)
                enqueue_custom(conn, "/bin/true", args.jobs)
                pid = service.workers()[0].pid
                spy = Path(sys.executable).with_name("py-spy")
                subprocess.run(
                    [str(spy), "record", "--pid", str(pid), "--duration", str(args.seconds), "--format", "raw",
                     "--output", args.out, "--nonblocking", *(["--idle"] if args.idle else [])],
                    check=True,
                )  # fmt: skip
                done = scalar(conn, "SELECT count(*) FROM pggit.backup_jobs WHERE status = 'completed'")
                print(f"{done} jobs completed")
        finally:
            service.stop()
    finally:
        end_context(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
