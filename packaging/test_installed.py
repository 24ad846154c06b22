#!/usr/bin/python3
"""The installed package, checked the way a DBA uses it (run by .ci/run with the system Python,
after `apt-get install ./dist/pggit-supervisor_*_all.deb`, before `apt-get purge`):

the programs answer, python3-systemd came along for the journal, the shipped config validates,
the drill user exists as an unprivileged system user, the schema installs from /usr/share, and
the service started exactly as systemd would (the unit's ExecStart, as the unit's user, with a
NOTIFY_SOCKET this script listens on and WATCHDOG_USEC set) sends READY and WATCHDOG, runs a
pg_dump backup scheduled from SQL and its restore drill (in a sandbox that is gone afterwards),
and stops cleanly on SIGTERM with STOPPING.

The database is on a throwaway cluster of its own (tests/helpers/cluster.py), not the machine's server,
whose configuration (port, authentication) is the machine's business.
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.cluster import Cluster  # noqa: E402

UNIT = "/lib/systemd/system/pggit-supervisor.service"
CONFIG = "/etc/pggit/supervisor.yaml"
DATABASE = "pggit_package_test"
checks: list[str] = []


def check(name: str, condition: bool, detail: str = "") -> None:
    checks.append(name)
    print(("ok   " if condition else "FAIL ") + name + (f": {detail}" if detail and not condition else ""), flush=True)
    if not condition:
        sys.exit(1)


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def unit_service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNIT)
    return parser["Service"]


def main() -> int:
    import pggit_supervisor

    check(
        "the package's module comes from the system Python",
        pggit_supervisor.__file__.startswith("/usr/lib/python3/dist-packages/"),
        pggit_supervisor.__file__,
    )
    version = run("/usr/bin/pggit-supervisor", "--version")
    check(
        "pggit-supervisor --version",
        version.returncode == 0 and pggit_supervisor.__version__ in version.stdout,
        version.stdout + version.stderr,
    )
    listener = run("/usr/bin/pggit-backup-listener", "--help")
    check("pggit-backup-listener --help", listener.returncode == 0 and "PGGIT_POLL_INTERVAL" in listener.stdout)
    journal = run(
        "/usr/bin/python3",
        "-c",
        "from systemd.journal import JournalHandler; from pggit_supervisor import log; "
        "assert log.JournalHandler is JournalHandler and log.use_journal('auto', {'JOURNAL_STREAM': '1:1'})",
    )
    check(
        "python3-systemd came with the package: under systemd it logs to the journal",
        journal.returncode == 0,
        journal.stderr,
    )
    shipped = run("/usr/bin/pggit-supervisor", "check-config", "-c", CONFIG)
    check("check-config accepts the shipped /etc/pggit/supervisor.yaml", shipped.returncode == 0, shipped.stderr)
    mode = os.stat(CONFIG)
    check("the config is 0640 root:pggit", oct(mode.st_mode & 0o777) == "0o640" and mode.st_uid == 0)
    check_drill_user()

    cluster = Cluster()
    try:
        cluster.start()
        admin = psycopg2.connect(cluster.dsn)
        admin.autocommit = True
        admin.cursor().execute(f"CREATE DATABASE {DATABASE}")
        admin.close()
        dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/{DATABASE}"
        installed = run("/usr/bin/pggit-supervisor", "schema", "install", "--dsn", dsn)
        check("schema install from /usr/share/pggit-supervisor/schema", installed.returncode == 0, installed.stderr)
        status = run("/usr/bin/pggit-supervisor", "schema", "status", "--dsn", dsn)
        check("schema status reports no pending file", status.returncode == 0, status.stdout)
        serve_like_systemd(dsn)
    finally:
        cluster.remove()
    print(f"{len(checks)} passed, 0 failed", flush=True)
    return 0


def check_drill_user() -> None:
    try:
        entry = pwd.getpwnam("pggit-drill")
    except KeyError:
        check("the package created the drill user pggit-drill", False, "no such user")
    check("the package created the drill user pggit-drill", True)
    check(
        "pggit-drill is a system user without a login shell or a home",
        entry.pw_uid < 1000
        and entry.pw_uid != 0
        and entry.pw_shell.endswith("nologin")
        and entry.pw_dir == "/nonexistent"
        and not os.path.exists(entry.pw_dir),
        repr(entry),
    )
    groups = {g.gr_name for g in grp.getgrall() if "pggit-drill" in g.gr_mem} | {grp.getgrgid(entry.pw_gid).gr_name}
    check(
        "pggit-drill is in no group of the service or the server",
        not groups & {"pggit", "postgres", "barman"},
        repr(groups),
    )


def serve_like_systemd(dsn: str) -> None:
    service = unit_service_section()
    check("the unit is Type=notify with a watchdog", service["Type"] == "notify" and service["WatchdogSec"] == "60")
    with open(CONFIG) as handle:
        original = handle.read()
    # point the shipped config at the test database, as a DBA edits it
    with open(CONFIG, "w") as handle:
        edited = re.sub(r"^dsn: .*$", f"dsn: {dsn}", original, count=1, flags=re.M)
        handle.write(
            edited.replace("heartbeat_interval: 10", "heartbeat_interval: 1").replace(
                "poll_interval: 10", "poll_interval: 1"
            )
        )
    sock_dir = tempfile.mkdtemp()
    sock_path = os.path.join(sock_dir, "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.settimeout(0.2)
    messages: list[str] = []

    def receive(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                pass

    proc: subprocess.Popen[str] | None = None
    try:
        warned = run("/usr/bin/pggit-supervisor", "check-config", "-c", CONFIG)
        check(
            "check-config warns about a superuser queue login",
            warned.returncode == 0 and "is a superuser" in warned.stderr,
            warned.stdout + warned.stderr,
        )
        for pre in service.get("ExecStartPre", "").splitlines():
            if pre.strip():
                check(f"ExecStartPre: {pre.strip()}", run(*shlex.split(pre)).returncode == 0)
        argv = shlex.split(service["ExecStart"])
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "NOTIFY_SOCKET": sock_path,
            "WATCHDOG_USEC": "2000000",
            "LANG": "C.UTF-8",
            "TMPDIR": "/var/lib/pggit/tmp",
        }
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )  # User=root, as the unit
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(m.startswith("READY=1") for m in messages):
            receive(0.5)
        # READY comes once a worker has reached its database; before it only the watchdog, the
        # start-timeout extension and STATUS may be said
        before = [m for m in messages[: next((i for i, m in enumerate(messages) if m.startswith("READY=1")), 0)]]
        check(
            "READY=1 once a worker can work, nothing but WATCHDOG, EXTEND_TIMEOUT_USEC and STATUS before it",
            any(m.startswith("READY=1") for m in messages)
            and all(m.split("=", 1)[0] in ("WATCHDOG", "EXTEND_TIMEOUT_USEC", "STATUS") for m in before),
            repr(messages[:4]),
        )
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pggit.backup_pg_dump('main', NULL, 'custom', '/var/lib/pggit/backups')")
            backup_id = cur.fetchone()[0]
        status = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and status not in ("completed", "failed"):
            receive(0.5)
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT status, location, verified_at IS NOT NULL FROM pggit.backups WHERE backup_id = %s",
                    (backup_id,),
                )
                status, location, verified = cur.fetchone()
        check(
            "a pg_dump backup scheduled from SQL completes, verified",
            status == "completed" and verified,
            f"status={status}",
        )
        with conn.cursor() as cur:
            cur.execute("SELECT pggit.schedule_restore_test(%s)", (backup_id,))
        drilled = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and drilled is None:
            receive(0.5)
            with conn.cursor() as cur:
                cur.execute("SELECT restore_test_result FROM pggit.backups WHERE backup_id = %s", (backup_id,))
                drilled = cur.fetchone()[0]
        conn.close()
        check("its restore drill passes in the sandbox", drilled == "passed", f"restore_test_result={drilled}")
        check(
            "the drill's sandbox is gone from /var/lib/pggit/tmp",
            not os.listdir("/var/lib/pggit/tmp"),
            repr(os.listdir("/var/lib/pggit/tmp")),
        )
        check(
            "its file is under /var/lib/pggit/backups",
            location.startswith("file:///var/lib/pggit/backups/") and os.path.exists(location[7:]),
        )
        proc.send_signal(signal.SIGTERM)
        receive(2)
        code = proc.wait(60)
        output = proc.stdout.read()
        check("SIGTERM stops it with exit code 0", code == 0, output[-2000:])
        kinds = [m.splitlines()[0].split("=")[0] for m in messages]
        check("WATCHDOG=1 pings arrive", kinds.count("WATCHDOG") >= 3, repr(kinds))
        check("STOPPING=1 is the last message", kinds[-1] == "STOPPING", repr(kinds[-3:]))
    finally:
        if proc is not None and proc.poll() is None:  # a check failed while it ran: leave nothing running
            proc.kill()  # its workers follow (their parent-death signal)
            proc.wait(30)
        listener.close()
        with open(CONFIG, "w") as handle:
            handle.write(original)


if __name__ == "__main__":
    sys.exit(main())
