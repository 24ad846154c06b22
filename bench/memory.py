"""Figure 5, memory: USS and PSS (psutil memory_full_info) of the supervisor and of each worker,
idle and while each worker runs a job (/bin/sleep; the tool itself is not counted), with 1 and 3
databases served (one worker per database). Goal: under 40 MB PSS per process. The baseline is a
bare interpreter of the same Python (`python -c "import time; time.sleep(60)"`), measured alongside.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
from common import Context, Row, Supervisor, admin, enqueue_custom, scalar, wait_until

GOAL = 40 << 20


def _mb(value: float) -> str:
    return f"{value / (1 << 20):.1f} MB"


def _sizes(proc: psutil.Process) -> tuple[int, int]:
    info = proc.memory_full_info()
    return info.uss, info.pss


def measure(ctx: Context, count: int, bare_pss: int) -> list[Row]:
    names = [ctx.new_database(f"mem{count}") for _ in range(count)]
    databases = [{"name": f"db{i}", "dsn": ctx.dsn(name)} for i, name in enumerate(names)]
    service = Supervisor(ctx, f"mem{count}", databases=databases).start()
    rows = []
    try:
        service.wait_for_log("worker started", count)
        time.sleep(3)  # past the first idle pass of each worker (metrics, schedules, presence)
        for state in ("idle", "running a job"):
            if state != "idle":
                for name in names:
                    with admin(ctx.dsn(name)) as conn:
                        (job_id,) = enqueue_custom(conn, "/bin/sleep 30")
                        query = "SELECT status FROM pggit.backup_jobs WHERE job_id = %s"
                        wait_until(lambda j=job_id: scalar(conn, query, (j,)) == "running", 30, "running")  # noqa: B023
                time.sleep(1.5)  # the tool started and a heartbeat went by
            assert service.proc is not None
            uss, pss = _sizes(psutil.Process(service.proc.pid))
            rows.append(Row("5 memory", f"{count} db, {state}: supervisor USS / PSS", f"bare {_mb(bare_pss)}",
                            f"{_mb(uss)} / {_mb(pss)}", pss / GOAL, 1.0))  # fmt: skip
            workers = [_sizes(worker) for worker in service.workers()]
            assert len(workers) == count, f"{len(workers)} workers"
            uss, pss = max(workers, key=lambda sizes: sizes[1])
            rows.append(Row("5 memory", f"{count} db, {state}: largest of {count} worker(s)", f"bare {_mb(bare_pss)}",
                            f"{_mb(uss)} / {_mb(pss)}", pss / GOAL, 1.0))  # fmt: skip
    finally:
        service.stop()
    return rows


def run(ctx: Context) -> list[Row]:
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        bare_pss = _sizes(psutil.Process(bare.pid))[1]
    finally:
        bare.kill()
        bare.wait()
    return measure(ctx, 1, bare_pss) + measure(ctx, 3, bare_pss)
