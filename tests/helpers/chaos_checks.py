"""The chaos soak's checks once the queue is drained (the invariants of issue 12), and its figures.
Each check returns the problems it found as lines naming the job; the soak fails with all of them,
the seed and the line that replays it. `fleet` is the soak's Fleet (hosts, faults, receiver)."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from helpers.chaos import SEED, Db, Receiver, overlapping, runs_of
from helpers.session import FAKE_TOOL

FINAL = ("completed", "permanently_failed", "cancelled")


def tool_processes(shared: Path) -> list[int]:
    """Live fake tools of this soak (their run files are under `shared`)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if FAKE_TOOL in cmdline and str(shared) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def check_invariants(jobs, fleet: Any, dbs: dict[str, Db], shared: Path, receiver: Receiver, cluster) -> list[str]:
    problems: list[str] = list(fleet.unexpected)
    logs = fleet.logs()
    for crash in re.findall(r"worker crashed .*\nTraceback[^\n]*\n(?:  .*\n)*\S.*", logs):
        problems.append("a worker crashed (an uncaught exception): " + crash)
    completed_logged = Counter(re.findall(r"job completed job=(\S+)", logs))
    for database, db in dbs.items():
        rows = {r["job_id"]: r for r in db.rows("SELECT job_id::text, * FROM pggit.backup_job_queue")}
        for job_id, row in rows.items():
            if row["job_state"] not in FINAL:
                problems.append(f"{database} job {job_id} ({row['tool']}) is {row['job_state']}: {row['last_error']}")
            if row["attempts"] > row["max_attempts"]:
                problems.append(f"{database} job {job_id}: attempts {row['attempts']} > max {row['max_attempts']}")
            if completed_logged[job_id] > 1:
                problems.append(f"{database} job {job_id} completed {completed_logged[job_id]} times")
        for job_id, (tag, kind, where) in jobs.items():
            if where != database:
                continue
            row = rows[job_id]
            runs = runs_of(shared / "runs" / tag)
            if row["job_state"] == "completed" and not any(run.exit_code == 0 for run in runs):
                problems.append(f"job {job_id} ({kind}) completed but no run of its tool exited 0: {runs}")
            if row["job_state"] != "completed" and completed_logged[job_id]:
                problems.append(f"job {job_id} ({kind}) is {row['job_state']} but was logged completed")
            if kind in ("ok", "slow") and row["job_state"] != "completed":
                problems.append(f"lost: job {job_id} ({kind}) is {row['job_state']}: {row['last_error']}; runs {runs}")
            if kind == "fail" and row["job_state"] == "completed":
                problems.append(f"job {job_id} (fail) completed")
            if overlapping(runs):
                problems.append(f"duplicate: job {job_id} ({kind}) ran twice at once: {runs}")
        for row in db.rows(
            "SELECT q.job_id::text, q.job_state, b.status FROM pggit.backup_job_queue q"
            " JOIN pggit.backups b USING (backup_id)"
            " WHERE b.status IS DISTINCT FROM CASE q.job_state WHEN 'completed' THEN 'completed'"
            " WHEN 'cancelled' THEN 'cancelled' WHEN 'permanently_failed' THEN 'failed' END"
        ):
            problems.append(f"{database} job {row['job_id']} is {row['job_state']}, its backup {row['status']}")
        in_progress = db.value("SELECT count(*) FROM pggit.backups WHERE status = 'in_progress'")
        if in_progress:
            problems.append(f"{database}: {in_progress} backup row(s) in_progress")
        problems.extend(notification_problems(database, db, receiver))
    problems.extend(backoff_problems(logs, 1, 4))  # the soak's retry settings
    problems.extend(schedule_problems(dbs["alpha"]))
    problems.extend(leftover_problems(shared, cluster))
    return problems


_LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?: (job claimed|job failed) job=(\S+) (.*)$", re.M)


def backoff_problems(logs: str, base_delay: float, max_delay: float) -> list[str]:
    """From every host's log: a job that failed to be retried (state=will_retry) at attempt k is
    claimed again no sooner than min(max_delay, base_delay * 2^(k-1)) later. Both lines are
    logged after their commit, and next_retry_at counts from the failing transaction's start, so
    the logged gap can only be longer, but for the moments between a commit and its log line."""
    events: dict[str, list[tuple[datetime, str, str]]] = {}
    for stamp, what, job_id, rest in _LOGGED.findall(logs):
        events.setdefault(job_id, []).append((datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"), what, rest))
    found = []
    for job_id, seen in events.items():
        seen.sort(key=lambda event: event[0])
        attempt, failed_at = 0, None
        for when, what, rest in seen:
            if what == "job claimed":
                if failed_at is not None:
                    wanted = min(max_delay, base_delay * 2 ** (attempt - 1))
                    waited = (when - failed_at).total_seconds()
                    if waited < wanted - 0.25:
                        found.append(
                            f"job {job_id}: attempt {attempt + 1} {waited:.2f} s after a failure, backoff {wanted:g} s"
                        )
                failed_at = None
                attempt = int(re.search(r"attempt=(\d+)/", rest)[1])
            elif "state=will_retry" in rest:
                failed_at = when
    return found


def notification_problems(database: str, db: Db, receiver: Receiver) -> list[str]:
    found = []
    for row in db.rows(
        "SELECT d.event_id::text, d.endpoint, d.attempts, d.delivered_at, d.dead_at, d.last_error"
        " FROM pggit.notification_deliveries d"
    ):
        got = receiver.received[row["event_id"]]
        if row["delivered_at"] is None:
            found.append(f"{database} notification {row['event_id']} not delivered: {row['last_error']}")
        if not 1 <= got <= row["attempts"]:
            found.append(f"{database} notification {row['event_id']} received {got} times, {row['attempts']} attempts")
    unowed = db.value(
        "SELECT count(*) FROM pggit.backup_job_queue q"
        " WHERE q.job_state IN ('completed', 'permanently_failed', 'cancelled') AND NOT EXISTS"
        " (SELECT 1 FROM pggit.notification_events e WHERE e.job_id = q.job_id AND e.event = q.job_state)"
    )
    if unowed:
        found.append(f"{database}: {unowed} job(s) ended without the notification of their final state")
    return found


def schedule_problems(db: Db) -> list[str]:
    found = []
    slots = db.rows("SELECT slot_time, outcome, backup_id FROM pggit.backup_schedule_slots ORDER BY slot_time")
    if len(slots) < 3:
        found.append(f"only {len(slots)} schedule slots recorded")
    for slot in slots:
        jobs = db.value("SELECT count(*) FROM pggit.backup_jobs WHERE backup_id = %s", (slot["backup_id"],))
        if slot["outcome"] != "enqueued" or jobs != 1:
            found.append(f"slot {slot['slot_time']}: {slot['outcome']}, {jobs} job(s)")
    gaps = [b["slot_time"] - a["slot_time"] for a, b in zip(slots, slots[1:], strict=False)]
    if any(gap.total_seconds() != 60 for gap in gaps):
        found.append(f"schedule slots not one per minute: {[s['slot_time'] for s in slots]}")
    return found


def leftover_problems(shared: Path, cluster) -> list[str]:
    found = []
    if tools := tool_processes(shared):
        found.append(f"orphan tool processes: {tools}")
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(shared) in cmdline and "pggit_supervisor" in cmdline:
            found.append(f"orphan supervisor process {proc.pid}: {cmdline}")
        if "pg_dump" in cmdline and f"port={cluster.port}" in cmdline:
            found.append(f"orphan pg_dump {proc.pid}")
    temp = [p.name for p in (shared / "dumps").rglob("*") if p.name.endswith(".partial") or ".verify-" in p.name]
    if temp:
        found.append(f"temporary files left: {temp}")
    if left := sorted(p.name for p in (shared / "tmp").iterdir()):
        found.append(f"temporary files left in the supervisors' TMPDIR: {left}")
    databases = {r["datname"] for r in Db(cluster.dsn).rows("SELECT datname FROM pg_database")}
    if extra := databases - {"postgres", "template0", "template1", "alpha", "beta"}:
        found.append(f"scratch databases left: {sorted(extra)}")
    return found


def figures_of(jobs, fleet: Any, dbs: dict[str, Db], problems: list[str]) -> dict[str, object]:
    logs = fleet.logs()
    states: Counter[str] = Counter()
    retries = 0
    for db in dbs.values():
        for row in db.rows("SELECT job_state, attempts FROM pggit.backup_job_queue"):
            states[row["job_state"]] += 1
            retries += max(row["attempts"] - 1, 0)
    [dumps] = dbs["alpha"].rows(
        "SELECT count(*) AS made, count(*) FILTER (WHERE job_state = 'completed') AS completed"
        " FROM pggit.backup_job_queue WHERE tool = 'pg_dump'"
    )
    return {
        "seed": SEED,
        "jobs": sum(states.values()),
        **{state: states[state] for state in FINAL},
        **{f"fault_{kind}": count for kind, count in sorted(fleet.faults.items())},
        "scheduled_dumps": f"{dumps['completed']}/{dumps['made']}",
        "rescues": logs.count("lease expired: job returned to the queue") + logs.count("worker died"),
        "retries": retries,
        "will_retry_logged": logs.count("state=will_retry"),
        "completions_logged": len(re.findall(r"job completed job=", logs)),
        "tool_runs": sum(len(runs_of(fleet.shared / "runs" / tag)) for tag, _, _ in jobs.values()),
        "notifications": sum(fleet.receiver.received.values()),
        "duplicates": sum(p.startswith("duplicate") for p in problems),
        "lost": sum(p.startswith("lost") for p in problems),
        "orphans": sum(p.startswith("orphan") for p in problems),
    }
