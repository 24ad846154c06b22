"""Figure 6s: what the scheduler costs per minute with 1,000 schedules across 100 databases.

Each database gets the schema and 10 schedules of mixed crons and tools (two every minute, one
every 5 and one every 15 minutes, three hourly, three daily or weekly; half overlap: queue, half
overlap: skip), and is served the way a supervisor serves it: DEFAULT_WORKERS workers, each with
a Scheduler of its own ticking every schedule_interval (defaults from config/model.py; the
workers' ticks evenly staggered), all of one database's workers sharing here one connection (one
backend per database keeps the run under max_connections; the server does the same work per
call either way). The schedulers are the real ones, driven in this process with an injected
clock over N simulated minutes: Scheduler.tick, not tick_if_due, so an error is raised instead
of logged. The simulated minutes lie just before the server's now (the database refuses slots
more than 5 minutes ahead of it); the server's clock only stamps seen_at.

Cost is CPU, not wall time: the client's time.process_time (croniter, psycopg2, json) plus the
server's, read from /proc (psutil) for the 100 backends and for the whole cluster (postmaster,
its live children and the children it has reaped: autovacuum, WAL writer, checkpointer). The
figure is client + cluster CPU seconds per simulated minute as a fraction of one core-minute.
Baselines of the same run, on the same connections and the same number of round trips:
- nothing due: the same number of schedules with crons that cannot fire in the window, so every
  tick is a touch only (what an idle fleet pays);
- batched touch: that touch for all of a database's schedules in one statement per tick (the
  existing function called over unnest, no schema change): what a set-based touch would save;
- round trip floor: a bare SELECT 1 per schedule per tick.
Correctness is checked too: every schedule's slots in the window were each decided once, and
made the jobs they should (overlap queue: one per slot; overlap skip: the first only, since no
worker drains the queue here), compared per schedule against croniter.match over the minutes.
Every worker ticks every schedule, so the cost grows with the workers per database (2 doubled it).
--quick keeps the 100 databases (the goal is about 1,000 schedules) over 3 minutes instead of 10.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psutil
from common import Context, Row, admin, scalar
from croniter import croniter

from pggit_supervisor.config.model import DEFAULT_SCHEDULE_INTERVAL, DEFAULT_WORKERS
from pggit_supervisor.queue import Queue, connect
from pggit_supervisor.scheduler import Schedule, Scheduler, fire_times

UTC = timezone.utc
DUMP = {"output_path": "/backups"}
# (name, cron, tool, args, overlap): 10 per database
MIXED = (
    ("dump-minutely", "* * * * *", "pg_dump", DUMP, "queue"),
    ("base-minutely", "* * * * *", "pg_basebackup", DUMP, "queue"),
    ("dump-5min", "*/5 * * * *", "pg_dump", DUMP, "queue"),
    ("incr-15min", "*/15 * * * *", "pgbackrest", {"stanza": "s2", "backup_type": "incr"}, "skip"),
    ("barman-hourly", "0 * * * *", "barman", {"server_name": "pg1"}, "skip"),
    ("dump-hourly", "30 * * * *", "pg_dump", DUMP, "queue"),
    ("base-hourly", "45 * * * *", "pg_basebackup", DUMP, "skip"),
    ("full-daily", "0 2 * * *", "pgbackrest", {"stanza": "main"}, "skip"),
    ("dump-daily", "15 3 * * *", "pg_dump", DUMP, "skip"),
    ("dump-weekly", "0 4 * * 0", "pg_dump", DUMP, "queue"),
)


class Clock:
    """The schedulers' clock, moved by the figure."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Cost:
    """CPU and wall seconds of one phase: client (this process), the phase's backends, the cluster."""

    client: float
    backends: float
    cluster: float
    wall: float

    def __sub__(self, other: Cost) -> Cost:
        return Cost(
            self.client - other.client,
            self.backends - other.backends,
            self.cluster - other.cluster,
            self.wall - other.wall,
        )

    def per_minute(self, minutes: int) -> Cost:
        return Cost(self.client / minutes, self.backends / minutes, self.cluster / minutes, self.wall / minutes)

    @property
    def cpu(self) -> float:
        """What the machine spends: this process and every process of the cluster."""
        return self.client + self.cluster

    def text(self) -> str:
        return f"{self.cpu:.2f} s ({self.client:.2f}+{self.cluster:.2f})"


def _cpu(process: psutil.Process, children: bool = False) -> float:
    times = process.cpu_times()
    total = times.user + times.system
    if children:  # the postmaster's reaped children (autovacuum workers that came and went)
        total += times.children_user + times.children_system
    return total


def snapshot(backends: list[psutil.Process], postmaster: psutil.Process) -> Cost:
    cluster = _cpu(postmaster, children=True)
    for child in postmaster.children():
        try:
            cluster += _cpu(child)
        except psutil.NoSuchProcess:  # ended between the listing and the read: now in the reaped sum
            pass
    return Cost(time.process_time(), sum(_cpu(p) for p in backends), cluster, time.perf_counter())


def schedules_of(idle_hour: int | None) -> tuple[Schedule, ...]:
    """The 10 schedules of a database; with idle_hour, the same names prefixed idle- and a daily
    cron at that hour, which the window never reaches (nothing due)."""
    found = []
    for i, (name, cron, tool, args, overlap) in enumerate(MIXED):
        if idle_hour is not None:
            name, cron = f"idle-{name}", f"{i} {idle_hour} * * *"
        found.append(Schedule(name=name, cron=cron, tool=tool, args=args, overlap=overlap))
    return tuple(found)


def make_databases(ctx: Context, count: int) -> list[str]:
    """`count` databases with the schema: installed once, the rest copied from it."""
    template = ctx.new_database("sched")
    names = [template]
    with admin(ctx.cluster.dsn) as conn:
        for i in range(1, count):
            name = f"{template}_{i:03d}"
            conn.cursor().execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            names.append(name)
            ctx.databases.append(name)
    return names


def drop_databases(ctx: Context, names: list[str]) -> None:
    with admin(ctx.cluster.dsn) as conn:
        for name in names:
            conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}"')
            ctx.databases.remove(name)


def tick_times(start: datetime, minutes: int, interval: float, workers: int) -> list[tuple[datetime, int]]:
    """(when, worker) of every tick after `start`: each worker every `interval`, staggered."""
    step = interval / workers
    count = int(minutes * 60 / step)
    return [(start + timedelta(seconds=step * k), k % workers) for k in range(1, count + 1)]


def drive(fleet: list[tuple[Queue, list[Scheduler]]], clock: Clock, ticks: list[tuple[datetime, int]]) -> None:
    for when, worker in ticks:
        clock.now = when
        for queue, schedulers in fleet:
            schedulers[worker].tick(queue)


def batched_touch(fleet: list[tuple[Queue, list[Scheduler]]], ticks: list[tuple[datetime, int]]) -> None:
    """The touch of every schedule of a database in one statement per tick (no slot recorded)."""
    for when, worker in ticks:
        for queue, schedulers in fleet:
            scheduler = schedulers[worker]
            names = [s.name for s in scheduler.schedules]
            definitions = [json.dumps(s.definition()) for s in scheduler.schedules]
            with queue.conn.cursor() as cur:
                cur.execute(
                    """SELECT t.* FROM unnest(%s::text[], %s::jsonb[]) AS u(name, definition),
                              LATERAL pggit.touch_backup_schedule(%s, u.name, u.definition, %s) t""",
                    (names, definitions, scheduler.worker_id, when),
                )
                cur.fetchall()


def round_trips(fleet: list[tuple[Queue, list[Scheduler]]], ticks: list[tuple[datetime, int]]) -> None:
    """A bare SELECT 1 where the scheduler makes its touch: the floor of one round trip each."""
    for _when, worker in ticks:
        for queue, schedulers in fleet:
            for _schedule in schedulers[worker].schedules:
                with queue.conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()


def cron_walking(schedules: tuple[Schedule, ...], start: datetime, ticks: list[tuple[datetime, int]]) -> float:
    """Client CPU seconds of fire_times alone over the ticks, for one database's schedules: each
    tick's window replayed as (the worker's previous tick, this one], close to the scheduler's
    (last slot recorded, now]. The same for every database, so the caller multiplies."""
    previous: dict[int, datetime] = {}
    started = time.process_time()
    for when, worker in ticks:
        after = previous.get(worker, start)
        for schedule in schedules:
            fire_times(schedule, after, when)
        previous[worker] = when
    return time.process_time() - started


def expected(start: datetime, end: datetime) -> dict[str, tuple[int, int]]:
    """Per schedule name: (slots due in (start, end], jobs they should make)."""
    found = {}
    first = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    minutes = []
    while first <= end:
        minutes.append(first)
        first += timedelta(minutes=1)
    for name, cron, _tool, _args, overlap in MIXED:
        due = sum(1 for minute in minutes if croniter.match(cron, minute))
        found[name] = (due, due if overlap == "queue" else min(due, 1))
    return found


def recorded(conn) -> dict[str, tuple[int, int]]:
    """Per mixed schedule: (slots recorded, jobs made). Every job of these databases is scheduled."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT l.schedule_name, count(*), count(j.job_id)
                 FROM pggit.backup_schedule_slots l
                 LEFT JOIN pggit.backup_jobs j ON j.backup_id = l.backup_id
                WHERE l.schedule_name NOT LIKE 'idle-%%'
                GROUP BY 1"""
        )
        return {name: (slots, jobs) for name, slots, jobs in cur.fetchall()}


def run(ctx: Context) -> list[Row]:
    databases = 100  # the scale even in --quick: the goal is about 1,000 schedules
    minutes = 3 if ctx.quick else 10
    interval, workers = DEFAULT_SCHEDULE_INTERVAL, DEFAULT_WORKERS
    names = make_databases(ctx, databases)
    conns = []
    try:
        conns = [connect(ctx.dsn(name), "bench-schedules") for name in names]
        backends = [psutil.Process(conn.get_backend_pid()) for conn in conns]
        postmaster = backends[0].parent()
        assert postmaster is not None
        # a window of whole simulated minutes ending before the server's now, ticks at :20 and :50
        now = scalar(conns[0], "SELECT now()")
        start = now.astimezone(UTC).replace(second=20, microsecond=0) - timedelta(minutes=minutes + 2)
        idle_hour = (start.hour + 12) % 24
        registered = start - timedelta(minutes=1)
        clock = Clock(registered)

        def fleet(idle: bool) -> list[tuple[Queue, list[Scheduler]]]:
            plan = schedules_of(idle_hour if idle else None)
            return [
                (
                    Queue(conn),
                    [
                        Scheduler(plan, f"bench-host/{name}/{w + 1}", interval, clock=clock, monotonic=lambda: 0.0)
                        for w in range(workers)
                    ],
                )
                for conn, name in zip(conns, names, strict=True)
            ]

        mixed, idle = fleet(idle=False), fleet(idle=True)
        # not measured: registration a minute before the window, then a tick at its start that
        # records the every-minute slots, so each backend has compiled the functions it calls
        # (a worker's connection lives for days: its first calls are not its cost per minute)
        for clock.now in (registered, start):
            for queue, schedulers in mixed + idle:
                for scheduler in schedulers:
                    scheduler.tick(queue)
        ticks = tick_times(start, minutes, interval, workers)

        def measure(work) -> Cost:
            before = snapshot(backends, postmaster)
            work()
            return (snapshot(backends, postmaster) - before).per_minute(minutes)

        full = measure(lambda: drive(mixed, clock, ticks))
        touch = measure(lambda: drive(idle, clock, ticks))
        batch = measure(lambda: batched_touch(idle, ticks))
        floor = measure(lambda: round_trips(idle, ticks))
        walking = cron_walking(schedules_of(None), start, ticks) * databases / minutes

        want = expected(registered, ticks[-1][0])
        matched = made = due = total_jobs = 0
        wrong = []
        for conn, name in zip(conns, names, strict=True):
            got = recorded(conn)
            for schedule, (slots, jobs) in want.items():
                have = got.get(schedule, (0, 0))
                due += slots
                total_jobs += jobs
                made += have[1]
                if have == (slots, jobs):
                    matched += 1
                elif len(wrong) < 5:
                    wrong.append(f"{name}/{schedule}: recorded {have}, due {(slots, jobs)}")
        if wrong:
            print("figure 6s: schedules whose slots did not match:", *wrong, sep="\n  ")
    finally:
        for conn in conns:
            conn.close()
        drop_databases(ctx, names)

    count = databases * len(MIXED)
    where = f"{count} schedules/{databases} dbs, {workers} w/db"
    per_call = f"{workers * 60 / interval:g} touch/sched/min"
    core = "60 s = 1 core"
    return [
        Row("6s schedules", f"{where}: CPU/min", core, full.text(), full.cpu / 60, 0.05),
        Row(
            "6s schedules", f"  of it the backends' SQL, {per_call}", core, f"{full.backends:.2f} s", full.backends / 60
        ),
        Row("6s schedules", "  of it the client's cron walk (fire_times)", core, f"{walking:.2f} s", walking / 60),
        Row("6s schedules", "  wall per simulated minute", core, f"{full.wall:.2f} s", full.wall / 60),
        Row("6s schedules", "nothing due (touch only), CPU/min", core, touch.text(), touch.cpu / 60, 0.05),
        Row("6s schedules", "mixed vs nothing due", f"{touch.cpu:.2f} s", f"{full.cpu:.2f} s", full.cpu / touch.cpu),
        Row(
            "6s schedules",
            "batched touch, 1 statement/db/tick",
            f"{touch.cpu:.2f} s",
            batch.text(),
            batch.cpu / touch.cpu,
        ),
        Row(
            "6s schedules",
            "round trip floor: SELECT 1/schedule",
            f"{touch.cpu:.2f} s",
            floor.text(),
            floor.cpu / touch.cpu,
        ),
        Row(
            "6s schedules",
            f"schedules with the jobs due, {minutes} min",
            f"{due} due, {total_jobs} jobs",
            f"{made} jobs, {matched}/{count} ok",
            matched / count,
            1.0,
            higher_is_better=True,
        ),
    ]
