"""One supervisor serving several queue databases (issue 10): each database has a pool of its own
workers, so one that becomes unreachable holds only its own workers while the others drain."""

from __future__ import annotations

import json
import re
import signal

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import parse_dsn

from helpers.db import make_dsn, query, scalar
from helpers.processes import wait_until
from helpers.service import queue_fake, wait_for_state
from helpers.session import PG_HOST, PG_PORT, PG_USER
from pggit_supervisor.scheduler import Schedule


def _open(dsn: str):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def _admin():
    return _open(make_dsn(PG_HOST, PG_PORT, PG_USER, "postgres"))


def _ours(admin, dbname: str) -> list[str]:
    """The application names of the supervisor's connections to `dbname`."""
    rows = query(
        admin,
        "SELECT application_name FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
        (dbname, "pggit-supervisor test/%"),
    )
    return sorted(row["application_name"] for row in rows)


def test_one_supervisor_drains_three_databases_while_one_is_unreachable_and_back(
    make_service, dsn, more_queue_dsns, tmp_path
):
    dsns = dict(zip(("alpha", "beta", "gamma"), [dsn, *more_queue_dsns(2)], strict=True))
    dbnames = {name: parse_dsn(found)["dbname"] for name, found in dsns.items()}
    databases = [
        {"name": "alpha", "dsn": dsns["alpha"], "workers": 2},
        {"name": "beta", "dsn": dsns["beta"]},
        {"name": "gamma", "dsn": dsns["gamma"]},
    ]
    conns = {name: _open(found) for name, found in dsns.items()}
    admin = _admin()
    service = make_service(dsn=None, workers=1, databases=databases).start()
    try:
        first = {name: queue_fake(conn, tmp_path, tag=f"first-{name}") for name, conn in conns.items()}
        for name, (_, job_id, _) in first.items():
            row = wait_for_state(conns[name], job_id, "completed", timeout=30)
            assert re.fullmatch(rf"test/{name}/[12]", row["worker_id"]), row["worker_id"]

        # each database has exactly its own workers' connections: a pool per database, bounded
        wait_until(
            lambda: (
                _ours(admin, dbnames["alpha"]) == ["pggit-supervisor test/alpha/1", "pggit-supervisor test/alpha/2"]
            ),
            10,
            "alpha's two workers",
        )
        assert _ours(admin, dbnames["beta"]) == ["pggit-supervisor test/beta/1"]
        assert _ours(admin, dbnames["gamma"]) == ["pggit-supervisor test/gamma/1"]

        # gamma becomes unreachable: no new connection, and its sessions are cut
        gamma = sql.Identifier(dbnames["gamma"])
        conns["gamma"].close()
        admin.cursor().execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(gamma))
        admin.cursor().execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbnames["gamma"],)
        )
        service.wait_for_log(r"cannot connect to the queue database.* database=gamma", timeout=30)

        # meanwhile the other two keep draining, each job in its own database's workers
        during = [
            (name, queue_fake(conns[name], tmp_path, tag=f"during-{name}-{i}"))
            for i in range(3)
            for name in ("alpha", "beta")
        ]
        for name, (_, job_id, _) in during:
            row = wait_for_state(conns[name], job_id, "completed", timeout=30)
            assert row["worker_id"].startswith(f"test/{name}/")
        failures = service.wait_for_log(r"cannot connect to the queue database.* database=gamma", timeout=30, count=2)
        assert all("worker=test/gamma/1" in line for line in failures), failures
        assert _ours(admin, dbnames["gamma"]) == []

        # gamma is back: its worker reconnects on its own and drains it
        admin.cursor().execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(gamma))
        conns["gamma"] = _open(dsns["gamma"])
        _, job_id, _ = queue_fake(conns["gamma"], tmp_path, tag="after-gamma")
        row = wait_for_state(conns["gamma"], job_id, "completed", timeout=60)
        assert row["worker_id"] == "test/gamma/1"
        service.wait_for_log(r"reconnected to the queue database.* database=gamma")

        # every job line names its database; no worker of one database touched another's
        log = service.log()
        for line in log.splitlines():
            if "job claimed" in line:
                assert re.search(r" database=(alpha|beta|gamma)\b", line), line
                database = re.search(r"database=(\w+)", line)[1]
                assert f"worker=test/{database}/" in line, line
        assert "worker died" not in log, "an unreachable database costs no worker restarts"
        assert service.stop() == 0
    finally:
        admin.cursor().execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(dbnames["gamma"]))
        )
        admin.close()
        for conn in conns.values():
            conn.close()


def test_a_busy_database_holds_only_its_own_workers(make_service, dsn, more_queue_dsns, tmp_path):
    dsns = {"alpha": dsn, "beta": more_queue_dsns(1)[0]}
    conns = {name: _open(found) for name, found in dsns.items()}
    databases = [{"name": name, "dsn": found} for name, found in dsns.items()]
    service = make_service(dsn=None, workers=1, databases=databases).start()
    try:
        _, long_job, _ = queue_fake(conns["alpha"], tmp_path, "--sleep", "600", tag="long")
        wait_for_state(conns["alpha"], long_job, "in_progress", timeout=30)
        _, waiting, _ = queue_fake(conns["alpha"], tmp_path, tag="behind")
        for i in range(3):  # beta drains while alpha's only worker is busy
            _, job_id, _ = queue_fake(conns["beta"], tmp_path, tag=f"beta-{i}")
            assert wait_for_state(conns["beta"], job_id, "completed", timeout=30)["worker_id"] == "test/beta/1"
        assert query(conns["alpha"], "SELECT job_state FROM pggit.backup_job_queue WHERE job_id = %s", (waiting,)) == [
            {"job_state": "ready"}
        ], "alpha has one worker, and it is busy: its pool is its own"
        assert service.stop(signal.SIGQUIT) == 0
    finally:
        for conn in conns.values():
            conn.close()


EVERY_MINUTE = {
    "cron": "* * * * *",
    "tool": "pg_dump",
    "catch_up": "all",
    "starting_deadline": "1h",
    "overlap": "queue",
}


def test_each_databases_schedules_tick_only_in_its_own_workers_and_schedules_shows_each(
    make_service, dsn, more_queue_dsns
):
    dsns = {"alpha": dsn, "beta": more_queue_dsns(1)[0]}
    conns = {name: _open(found) for name, found in dsns.items()}
    schedules = [{**EVERY_MINUTE, "name": f"{name}-minutely", "database": name} for name in dsns]
    for entry in schedules:  # registered 3 minutes ago in its own database: its slots are due now
        definition = Schedule(**{**entry, "args": {}, "starting_deadline": 3600}).definition()
        conn = conns[entry["database"]]
        scalar(
            conn,
            "SELECT registered_at FROM pggit.touch_backup_schedule('seed', %s, %s, now() - interval '3 minutes')",
            (entry["name"], json.dumps(definition)),
        )
        conn.cursor().execute("DELETE FROM pggit.backup_schedule_hosts WHERE host = 'seed'")
    databases = [{"name": name, "dsn": found} for name, found in dsns.items()]
    service = make_service(dsn=None, workers=1, databases=databases, schedules=schedules, schedule_interval=1)
    service.start()
    try:
        for name, conn in conns.items():
            wait_until(
                lambda conn=conn: scalar(conn, "SELECT count(*) FROM pggit.backup_schedule_slots") >= 3,
                60,
                f"{name}'s slots",
            )
        assert service.stop() == 0
        for name, conn in conns.items():
            recorded = query(conn, "SELECT DISTINCT schedule_name, recorded_by FROM pggit.backup_schedule_slots")
            assert recorded == [{"schedule_name": f"{name}-minutely", "recorded_by": "test"}], recorded
            hosts = query(conn, "SELECT DISTINCT schedule_name FROM pggit.backup_schedule_hosts")
            assert hosts == [{"schedule_name": f"{name}-minutely"}], "the other database's schedule never came here"
        for line in service.log().splitlines():
            if "scheduled backup enqueued" in line:
                schedule = re.search(r"schedule=(\w+)-minutely", line)[1]
                assert f"database={schedule}" in line, line

        shown = service.command("schedules")
        assert shown.returncode == 0, shown.stderr
        blocks = shown.stdout.split("\n\n")
        assert [block.splitlines()[0].split(" (")[0] for block in blocks] == ["database alpha", "database beta"]
        for name, block in zip(dsns, blocks, strict=True):
            rows = [line.split()[0] for line in block.splitlines()[2:]]
            assert rows == [f"{name}-minutely"], block
            assert "enqueued (ready)" in block
    finally:
        for conn in conns.values():
            conn.close()
