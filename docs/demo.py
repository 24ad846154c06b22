"""`make demo`: a throwaway PostgreSQL, backups scheduled from SQL the way the guide does, run by
the supervisor with two workers, then the queue and the backups printed. Everything it starts
is stopped and removed at the end. Set PGGIT_DEMO_DSN to use an existing database instead.

Works as root (the cluster and the tools run as the postgres OS user) and as a normal user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import psycopg2.extras
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pggit_supervisor import sandbox, schema  # noqa: E402

IS_ROOT = os.geteuid() == 0
DB_USER = "postgres" if IS_ROOT else pwd.getpwuid(os.getuid()).pw_name
# restore drills run their throwaway cluster as this unprivileged user (the package creates it);
# a normal user's demo runs them as that user itself
DRILL_USER = "pggit-drill" if IS_ROOT else DB_USER

SCHEDULE = [
    "SELECT pggit.backup_pg_dump('main', NULL, 'custom', '{dir}')",
    "SELECT pggit.backup_pg_dump('main', 'public', 'directory', '{dir}', '{{\"jobs\": \"2\"}}'::jsonb)",
    "SELECT pggit.backup_pg_dump('main', 'public', 'plain', '{dir}', '{{\"compression_level\": \"9\"}}'::jsonb)",
    "SELECT pggit.backup_pg_basebackup('main', '{dir}')",
]


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_as_db_user(argv: list[str]) -> None:
    if IS_ROOT:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd="/")  # a checkout under /root is 0700


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        sys.exit("demo: no PostgreSQL server binaries found; apt-get install postgresql")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cluster(work: Path) -> tuple[str, Path]:
    bin_dir, port = pg_bin(), free_port()
    data = work / "data"
    # C.UTF-8 always exists on Debian; LANG (often forwarded by ssh) may name a missing locale
    run_as_db_user(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            DB_USER,
            "--no-sync",
            "--locale=C.UTF-8",
            "--encoding=UTF8",
        ]
    )
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{work}'\n")
    run_as_db_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(work / "postgres.log"), "-w", "start"])
    return f"host=127.0.0.1 port={port} user={DB_USER} dbname=postgres", data


def ensure_drill_user() -> bool:
    """Creates the drill user as the Debian package does, if missing; True if it was made."""
    try:
        pwd.getpwnam(DRILL_USER)
        return False
    except KeyError:
        subprocess.run(sandbox.useradd_argv(DRILL_USER), check=True)
        return True


def show(conn, title: str, sql: str) -> list[dict]:
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    say(title)
    if rows:
        columns = list(rows[0].keys())
        cells = [[str(row[c]) if row[c] is not None else "" for c in columns] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        print("-+-".join("-" * w for w in widths))
        for r in cells:
            print(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    print(f"({len(rows)} rows)", flush=True)
    return rows


def wait_for_queue(conn, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pggit.backup_job_queue WHERE job_state IN ('ready', 'in_progress', 'will_retry')"
            )
            if cur.fetchone()[0] == 0:
                return
        time.sleep(0.5)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="pggit-demo-"))
    os.chmod(work, 0o755)
    if IS_ROOT:
        shutil.chown(work, "postgres", "postgres")
    backups = work / "backups"
    data = None
    supervisor = None
    made_user = False
    try:
        made_user = ensure_drill_user()
        dsn = os.environ.get("PGGIT_DEMO_DSN")
        if dsn:
            say("using PGGIT_DEMO_DSN")
        else:
            say(f"starting a throwaway PostgreSQL in {work}")
            dsn, data = start_cluster(work)
        run_as_db_user(["mkdir", "-p", str(backups)])

        say("installing the schema (pggit-supervisor schema install)")
        schema.install(dsn)
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        conn.cursor().execute("""CREATE TABLE IF NOT EXISTS public.demo_orders AS
                                 SELECT g AS id, 'order ' || g AS label FROM generate_series(1, 10000) g""")

        config = work / "supervisor.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "dsn": dsn,
                    "worker_id": "demo",
                    "workers": 2,
                    "poll_interval": 2,
                    "heartbeat_interval": 1,
                    "lease_seconds": 30,
                    "shutdown_timeout": 30,
                    "log_level": "INFO",
                    "drill_user": DRILL_USER,
                    "tools": {
                        tool: {"allowed_output_dirs": [str(backups)], **({"run_as": "postgres"} if IS_ROOT else {})}
                        for tool in ("pg_dump", "pg_basebackup")
                    },
                }
            )
        )
        say("starting the supervisor with two workers (its log follows on stderr)")
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "pggit_supervisor", "run", "-c", str(config)], cwd=ROOT, stdin=subprocess.DEVNULL
        )

        say("scheduling backups from SQL, as the guide does")
        for sql in SCHEDULE:
            statement = sql.format(dir=backups)
            print(statement, flush=True)
            conn.cursor().execute(statement)

        wait_for_queue(conn)
        say("scheduling a restore drill of every completed backup")
        statement = "SELECT pggit.schedule_restore_test(backup_id) FROM pggit.list_backups(p_status := 'completed')"
        print(statement, flush=True)
        conn.cursor().execute(statement)
        wait_for_queue(conn)

        show(
            conn,
            "the queue (pggit.backup_job_queue)",
            "SELECT job_id, backup_name, tool, status, job_state, attempts, worker_id, last_error "
            "FROM pggit.backup_job_queue ORDER BY created_at",
        )
        rows = show(
            conn,
            "the backups (pggit.backups)",
            "SELECT backup_tool, status, backup_size, left(checksum, 20) AS checksum, "
            "verified_at IS NOT NULL AS verified, restore_test_result, location "
            "FROM pggit.backups ORDER BY created_at",
        )
        conn.close()
        good = sum(
            1
            for row in rows
            if row["status"] == "completed" and row["verified"] and row["restore_test_result"] == "passed"
        )
        say(f"{good} of {len(SCHEDULE)} backups completed, verified and restore-tested")
        return 0 if good == len(SCHEDULE) else 1
    finally:
        if supervisor is not None:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(60)
        if data is not None:
            subprocess.run(
                (["runuser", "-u", "postgres", "--"] if IS_ROOT else [])
                + [str(pg_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
            )
        shutil.rmtree(work, ignore_errors=True)
        if made_user:
            subprocess.run(["userdel", DRILL_USER], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        say("stopped everything the demo started")


if __name__ == "__main__":
    sys.exit(main())
