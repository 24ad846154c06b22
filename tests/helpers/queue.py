"""Small helpers for queue tests: schedule, claim and read jobs."""

from helpers.db import query, scalar


def schedule_dump(conn, schema=None, options="{}"):
    """Queues a pg_dump backup; returns (backup_id, job_id)."""
    backup_id = scalar(conn, "SELECT pggit.backup_pg_dump('main', %s, 'custom', '/backups', %s)", (schema, options))
    return backup_id, scalar(conn, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))


def schedule_stanza(conn, stanza, options="{}"):
    backup_id = scalar(conn, "SELECT pggit.backup_pgbackrest('full', 'main', %s, %s)", (stanza, options))
    return backup_id, scalar(conn, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))


def claim(conn, worker="w1", tools=None, lease=60):
    rows = query(conn, "SELECT * FROM pggit.claim_backup_job(%s, %s, %s)", (worker, tools, lease))
    return rows[0] if rows else None


def job(conn, job_id):
    return query(conn, "SELECT * FROM pggit.backup_job_queue WHERE job_id = %s", (job_id,))[0]


def backup(conn, backup_id):
    return query(conn, "SELECT * FROM pggit.backups WHERE backup_id = %s", (backup_id,))[0]


def force(conn, sql, params=None):
    """Runs a statement as the queue functions do (past the hand-edit rules): to move time along,
    or to forge a job with an INSERT. Test-only: it works because the tests connect as the tables'
    owner (a superuser), the one role whose marker the triggers accept outside the queue
    functions; no role granted to a user can do this."""
    with conn.cursor() as cur:
        cur.execute("SET pggit.queue_internal = 'on'")
        try:
            cur.execute(sql, params)
        finally:
            cur.execute("RESET pggit.queue_internal")
