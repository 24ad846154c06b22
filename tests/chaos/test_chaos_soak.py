"""The chaos soak: a fleet of supervisors (distinct worker ids) serving two queue databases drains
a seeded mix of short custom jobs and scheduled pg_dump backups while a seeded plan kills
workers, tools and whole hosts, restarts supervisors and PostgreSQL, cuts connections, changes
worker counts by SIGHUP and takes the webhook receiver down. Once the faults stop and the queue
is drained, the issue's invariants must hold. `make test` runs a short soak, `make chaos` a long
one; PGGIT_CHAOS_SEED / PGGIT_CHAOS_JOBS / PGGIT_CHAOS_SECONDS replay or resize it."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import time
from collections import Counter
from pathlib import Path

from helpers.chaos import (
    JOB_KINDS,
    JOBS,
    SECONDS,
    SEED,
    Db,
    Plan,
    Receiver,
    make_plan,
    replay_hint,
)
from helpers.chaos_checks import FINAL, check_invariants, figures_of, tool_processes
from helpers.processes import wait_until
from helpers.service import Service
from helpers.session import FAKE_TOOL
from pggit_supervisor.scheduler import Schedule

HOSTS = ("host-a", "host-b", "host-c")
SCHEDULE = {
    "name": "chaos-every-minute",
    "database": "alpha",
    "cron": "* * * * *",
    "tool": "pg_dump",
    "catch_up": "all",
    "starting_deadline": "1h",
    "overlap": "queue",
}


def host_config(name: str, cluster, shared: Path, receiver: Receiver, workers: int) -> dict:
    return {
        "worker_id": name,
        "workers": workers,
        "databases": [{"name": db, "dsn": cluster.dsn_for(db)} for db in ("alpha", "beta")],
        "poll_interval": 2,
        "heartbeat_interval": 0.5,
        "lease_seconds": 5,
        "shutdown_timeout": 5,
        "kill_grace": 1,
        "worker_timeout": 10,
        "schedule_interval": 1,
        "retry": {"base_delay": 1, "max_delay": 4},
        "tools": {
            "custom": {"allowed_commands": [FAKE_TOOL], "timeout": 30},
            "pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(shared / "dumps")]},
        },
        "schedules": [{**SCHEDULE, "args": {"output_path": str(shared / "dumps")}}],
        "notifications": {
            "allowed_hosts": ["127.0.0.1"],
            "endpoints": [
                {
                    "name": "chaos",
                    "url": receiver.url,
                    "events": ["completed", "will_retry", "permanently_failed", "cancelled"],
                }
            ],
            "max_attempts": 30,
            "backoff_base": 1,
            "backoff_cap": 2,
            "timeout": 2,
        },
    }


class Fleet:
    """The hosts, the faults done to them and their counts."""

    def __init__(self, cluster, shared: Path, receiver: Receiver) -> None:
        self.cluster, self.shared, self.receiver = cluster, shared, receiver
        self.hosts: dict[str, Service] = {}
        self.configs: dict[str, dict] = {}
        self.down_until: dict[str, float] = {}  # host lost: restarted then
        self.stopping: set[str] = set()  # SIGTERM sent: restarted once it exited
        self.webhook_up_at: float | None = None
        self.faults: Counter[str] = Counter()
        self.sigterm_exits: list[int] = []
        self.starts: Counter[str] = Counter()
        self.unexpected: list[str] = []  # a supervisor that ended without being told to: what it said
        for name in HOSTS:
            directory = shared / name
            directory.mkdir()
            self.configs[name] = host_config(name, cluster, shared, receiver, 2)
            self.hosts[name] = Service(directory, None, **self.configs[name])

    def start(self, name: str | None = None) -> None:
        for host in [name] if name else list(self.hosts):
            self.starts[host] += 1
            # a TMPDIR of the soak's own: what the product leaves there is the soak's to find
            self.hosts[host].start(env={"TMPDIR": str(self.shared / "tmp")})

    def up(self, name: str) -> bool:
        """Started and past its start-up: its signal handlers are installed (a SIGTERM before that
        ends the process by the default action, which is no fault of the service)."""
        service = self.hosts[name]
        return (
            service.proc is not None
            and service.proc.poll() is None
            and name not in self.stopping
            and service.log().count("supervisor started") >= self.starts[name]
        )

    def alive(self) -> list[str]:
        return [name for name in self.hosts if self.up(name)]

    def tick(self) -> None:
        """Brings back what a fault took down once its time is up, and a supervisor that ended on
        its own (recorded as a problem with its last log lines, then restarted)."""
        now = time.monotonic()
        for name, service in self.hosts.items():
            code = service.proc.poll() if service.proc else None
            if code is not None and name not in self.down_until and name not in self.stopping:
                lines = service.log().splitlines()
                # why it ended: every worker death and kill it logged (a crash loop counts them), then its end
                deaths = [
                    line for line in lines if re.search(r"worker died|stopped heartbeating|crashing in a loop", line)
                ]
                tail = "\n    ".join(deaths[-20:] + lines[-6:])
                self.unexpected.append(f"supervisor {name} ended on its own with {code}:\n    {tail}")
                self.start(name)
        for name, when in list(self.down_until.items()):
            if now >= when:
                del self.down_until[name]
                self.start(name)
        for name in list(self.stopping):
            code = self.hosts[name].proc.poll()
            if code is not None:
                self.sigterm_exits.append(code)
                self.stopping.discard(name)
                self.start(name)
        if self.webhook_up_at is not None and now >= self.webhook_up_at:
            self.receiver.up()
            self.webhook_up_at = None

    def inject(self, kind: str, pick: int, value: float) -> None:
        alive = self.alive()
        if not alive:
            return
        host = alive[pick % len(alive)]
        service = self.hosts[host]
        done = True
        if kind == "kill_worker":
            workers = service.workers()
            done = bool(workers) and _kill(workers[pick % len(workers)].pid)
        elif kind == "kill_tool":
            tools = tool_processes(self.shared)
            done = bool(tools) and _kill(tools[pick % len(tools)])
        elif kind == "host_loss":
            done = len(alive) > 1
            if done:
                for pid in [service.proc.pid, *(w.pid for w in service.workers())]:
                    _kill(pid)
                service.proc.wait(10)
                self.down_until[host] = time.monotonic() + 1 + 4 * value
        elif kind == "sigterm_restart":
            service.signal(signal.SIGTERM)
            self.stopping.add(host)
        elif kind == "sighup_workers":
            self.configs[host]["workers"] = 1 + int(value * 3)
            service.write_config(self.configs[host])
            service.signal(signal.SIGHUP)
        elif kind in ("pg_restart_fast", "pg_restart_immediate"):
            self.cluster.pg_ctl("-m", kind.rsplit("_", 1)[1], "restart")
        elif kind == "connection_cut":
            Db(self.cluster.dsn).rows(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN ('alpha', 'beta')"
                " AND application_name <> 'chaos-harness' AND pid <> pg_backend_pid()"
            )
        elif kind == "webhook_down":
            self.receiver.down()
            self.webhook_up_at = time.monotonic() + 1 + 5 * value
        if done:
            self.faults[kind] += 1

    def settle(self) -> None:
        """Every fault undone: each host running, the receiver up."""
        deadline = time.monotonic() + 30
        while self.down_until or self.stopping or self.webhook_up_at is not None or len(self.alive()) < len(HOSTS):
            self.down_until = {name: 0 for name in self.down_until}
            self.webhook_up_at = 0 if self.webhook_up_at is not None else None
            self.tick()
            if time.monotonic() > deadline:
                late = {name: self.hosts[name].log().splitlines()[-8:] for name in HOSTS if not self.up(name)}
                raise AssertionError(f"the fleet is not back after 30 s: stopping={self.stopping}, not up: {late}")
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(service.log() for service in self.hosts.values())

    def stop(self) -> list[int]:
        for service in self.hosts.values():
            service.signal(signal.SIGTERM)
        return [service.proc.wait(30) for service in self.hosts.values()]

    def cleanup(self) -> None:
        for service in self.hosts.values():
            service.cleanup()


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def enqueue(db: Db, shared: Path, tag: str, kind: str) -> str:
    _, args, max_attempts, metadata = JOB_KINDS[kind]
    runs = shared / "runs" / tag
    backup_id = db.value(
        "SELECT pggit.register_backup(%s, 'full', 'custom', %s, p_branch_name := 'main')", (f"chaos-{tag}", str(shared))
    )
    command = " ".join([FAKE_TOOL, *args, "--write-runs", str(runs)])
    return str(
        db.value(
            "SELECT pggit.enqueue_backup_job(%s, %s, 'custom', %s, %s)",
            (backup_id, command, max_attempts, json.dumps(metadata)),
        )
    )


def cancel_running(dbs: dict[str, Db], cancels: dict[str, str], cancelled: set[str]) -> None:
    """Cancels by hand (the guide's UPDATE) each cancel-kind job that is running."""
    for database, db in dbs.items():
        ids = [job for job, where in cancels.items() if where == database and job not in cancelled]
        if ids:
            for row in db.rows(
                "UPDATE pggit.backup_jobs SET status = 'cancelled'"
                " WHERE job_id = ANY(%s::uuid[]) AND status = 'running' RETURNING job_id::text",
                (ids,),
            ):
                cancelled.add(row["job_id"])


def run_plan(plan: Plan, fleet: Fleet, dbs: dict[str, Db], shared: Path) -> dict[str, tuple[str, str, str]]:
    """Enqueues the jobs and injects the faults at their moments; job id -> (tag, kind, database)."""
    jobs: dict[str, tuple[str, str, str]] = {}
    cancels: dict[str, str] = {}
    cancelled: set[str] = set()
    pending_jobs, pending_faults = list(plan.jobs), list(plan.faults)
    start = time.monotonic()
    while pending_jobs or pending_faults:
        now = time.monotonic() - start
        while pending_jobs and pending_jobs[0].at <= now:
            job = pending_jobs.pop(0)
            job_id = enqueue(dbs[job.database], shared, job.tag, job.kind)
            jobs[job_id] = (job.tag, job.kind, job.database)
            if job.kind == "cancel":
                cancels[job_id] = job.database
        while pending_faults and pending_faults[0].at <= now:
            fault = pending_faults.pop(0)
            fleet.inject(fault.kind, fault.pick, fault.value)
        fleet.tick()
        cancel_running(dbs, cancels, cancelled)
        time.sleep(0.1)
    fleet.settle()
    deadline = time.monotonic() + 120 + 0.1 * len(plan.jobs)  # drained, or the check says what is not
    while time.monotonic() < deadline:
        cancel_running(dbs, cancels, cancelled)
        open_jobs = sum(
            db.value("SELECT count(*) FROM pggit.backup_job_queue WHERE job_state <> ALL(%s)", (list(FINAL),))
            for db in dbs.values()
        )
        owed = sum(
            db.value(
                "SELECT count(*) FROM pggit.notification_deliveries WHERE delivered_at IS NULL AND dead_at IS NULL"
            )
            for db in dbs.values()
        )
        if open_jobs == 0 and owed == 0:
            break
        time.sleep(0.5)
    return jobs


def test_a_fleet_under_seeded_faults_loses_no_job_and_runs_none_twice(chaos_cluster, shared_dir):
    seed = SEED
    print(f"\nchaos soak: seed={seed} jobs={JOBS} seconds={SECONDS:g}\n{replay_hint(seed)}")
    (shared_dir / "dumps").mkdir()
    os.chown(shared_dir / "dumps", *_postgres_ids())
    (shared_dir / "tmp").mkdir(mode=0o1777)
    (shared_dir / "tmp").chmod(0o1777)
    (shared_dir / "runs").mkdir()
    (shared_dir / "runs").chmod(0o777)
    receiver = Receiver()
    dbs = {name: Db(chaos_cluster.dsn_for(name)) for name in ("alpha", "beta")}
    fleet = Fleet(chaos_cluster, shared_dir, receiver)
    plan = make_plan(seed, JOBS, SECONDS, list(dbs))
    try:
        # the schedule as if it had existed for three minutes: slots to catch up from the start
        register_schedule_in_the_past(dbs["alpha"], shared_dir, minutes=3)
        fleet.start()
        for db in dbs.values():  # every job ending from now on is owed a notification
            wait_until(
                lambda db=db: db.value(
                    "SELECT count(*) FROM pggit.notification_endpoints WHERE endpoint_name = 'chaos'"
                ),
                30,
                "the endpoint registered",
            )
        jobs = run_plan(plan, fleet, dbs, shared_dir)
        exits = fleet.stop()
        problems = check_invariants(jobs, fleet, dbs, shared_dir, receiver, chaos_cluster)
        figures = figures_of(jobs, fleet, dbs, problems)
        print("chaos soak figures: " + " ".join(f"{key}={value}" for key, value in figures.items()))
        assert not problems, (
            f"seed {seed}: {len(problems)} invariant(s) broken:\n"
            + "\n".join(problems[:40])
            + ("\n" + replay_hint(seed))
        )
        assert set(exits) == {0} and set(fleet.sigterm_exits) <= {0}, (
            f"seed {seed}: supervisors exited {exits}, after SIGTERM {fleet.sigterm_exits}\n{replay_hint(seed)}"
        )
    finally:
        fleet.cleanup()
        receiver.close()
        for db in dbs.values():
            db.close()


def _postgres_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def register_schedule_in_the_past(db: Db, shared: Path, minutes: int) -> None:
    values = {**SCHEDULE, "args": {"output_path": str(shared / "dumps")}, "starting_deadline": 3600}
    values.pop("database")
    definition = Schedule(**values).definition()
    db.rows(
        "SELECT registered_at FROM pggit.touch_backup_schedule('seed', %s, %s, now() - make_interval(mins => %s))",
        (SCHEDULE["name"], json.dumps(definition), minutes),
    )
    db.rows("DELETE FROM pggit.backup_schedule_hosts WHERE host = 'seed'")
