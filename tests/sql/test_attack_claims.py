"""Attacks on claims, performed as a compromised host would: two real worker logins on one queue.

Host A and host B each log in as their own LOGIN role with pggit_backup_worker (a fleet gives
every host its own login). B tries to finish, fail, release, abandon, guess or steal A's claim.
Each attempt must change nothing; A's own calls keep working afterwards.
"""

from __future__ import annotations

import hashlib
import json

import psycopg2
import pytest
from psycopg2 import sql

from helpers.db import WORKER, query, scalar
from helpers.queue import schedule_dump, schedule_stanza


@pytest.fixture
def hosts(login_as):
    """(A's connection, B's connection): two hosts, each with its own worker login."""
    return login_as(WORKER)[0], login_as(WORKER)[0]


def claim_as(conn, worker_id, tools=None):
    rows = query(conn, "SELECT * FROM pggit.claim_backup_job(%s, %s, 3600)", (worker_id, tools))
    return rows[0] if rows else None


def job_row(db, job_id):
    """Every column of the job, as its owner sees it (what an attack must leave unchanged)."""
    return query(db, "SELECT * FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))[0]


def backup_row(db, backup_id):
    return query(db, "SELECT * FROM pggit.backups WHERE backup_id = %s", (backup_id,))[0]


def attempt(conn, statement, params=None):
    """What the call returned, or the SQLSTATE it was refused with."""
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None
    except psycopg2.Error as exc:
        return exc.pgcode


def readable_values(conn, relation) -> list[str]:
    """Every value of every column of `relation` that this login may select, as text."""
    columns = [
        r["attname"]
        for r in query(
            conn,
            """
        SELECT a.attname FROM pg_attribute a
         WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped""",
            (relation,),
        )
    ]
    values = []
    for column in columns:
        rows = attempt(conn, sql.SQL("SELECT {}::text FROM {}").format(sql.Identifier(column), sql.SQL(relation)))
        if isinstance(rows, list):
            values += [row[0] for row in rows if row[0] is not None]
    return values


def test_another_host_cannot_finish_a_claim_with_forged_facts(db, hosts):
    host_a, host_b = hosts
    backup_id, job_id = schedule_dump(db)
    held = claim_as(host_a, "host-a/1")
    before_job, before_backup = job_row(db, job_id), backup_row(db, backup_id)
    forged = '{"backup_size": 1, "verified": true, "location": "file:///nowhere", "checksum": "sha256:00"}'
    # even holding A's token (read, leaked or guessed), B's login is not the claim's
    assert attempt(
        host_b, "SELECT pggit.finish_backup_job(%s, %s, 'done', %s)", (job_id, held["claim_token"], forged)
    ) == [(False,)]
    assert job_row(db, job_id) == before_job and backup_row(db, backup_id) == before_backup
    assert scalar(host_a, "SELECT pggit.finish_backup_job(%s, %s, 'done')", (job_id, held["claim_token"])) is True
    assert backup_row(db, backup_id)["verified_at"] is None


def test_another_host_cannot_fail_a_claim(db, hosts):
    host_a, host_b = hosts
    _, job_id = schedule_dump(db)
    held = claim_as(host_a, "host-a/1")
    before = job_row(db, job_id)
    assert attempt(
        host_b, "SELECT pggit.fail_claimed_backup_job(%s, %s, 'sabotage', false)", (job_id, held["claim_token"])
    ) == [(None,)]
    assert job_row(db, job_id) == before
    assert scalar(host_a, "SELECT pggit.heartbeat_backup_job(%s, %s)", (job_id, held["claim_token"])) is True


def test_another_host_cannot_release_a_claim_and_take_it(db, hosts):
    host_a, host_b = hosts
    _, job_id = schedule_dump(db)
    held = claim_as(host_a, "host-a/1")
    before = job_row(db, job_id)
    assert attempt(host_b, "SELECT pggit.release_backup_job(%s, %s)", (job_id, held["claim_token"])) == [(False,)]
    assert job_row(db, job_id) == before
    assert claim_as(host_b, "host-b/1") is None


def test_another_host_cannot_keep_a_dead_claim_alive_with_heartbeats(db, hosts):
    host_a, host_b = hosts
    _, job_id = schedule_dump(db)
    held = claim_as(host_a, "host-a/1")
    before = job_row(db, job_id)
    # B renewing A's lease would keep a crashed host's job from ever being rescued
    assert attempt(host_b, "SELECT pggit.heartbeat_backup_job(%s, %s, 86400)", (job_id, held["claim_token"])) == [
        (False,)
    ]
    assert job_row(db, job_id) == before


def test_no_role_can_read_or_guess_a_claims_token(db, login_as, hosts):
    host_a, host_b = hosts
    _, job_id = schedule_dump(db)
    held = claim_as(host_a, "host-a/1")
    token = str(held["claim_token"])
    # A's session last ran a call with the token in its text; other logins see "insufficient privilege"
    assert scalar(host_a, "SELECT pggit.heartbeat_backup_job(%s, %s)", (job_id, held["claim_token"])) is True
    digest = hashlib.sha256(token.encode()).hexdigest()
    observers = {
        "reader": login_as("pggit_backup_reader")[0],
        "operator": login_as("pggit_backup_operator")[0],
        "worker B": host_b,
    }
    for who, conn in observers.items():
        seen = [
            v
            for relation in ("pggit.backup_jobs", "pggit.backup_job_queue", "pg_stat_activity")
            for v in readable_values(conn, relation)
        ]
        assert seen, f"{who} reads the queue"
        leaks = [v for v in seen if token in v or digest in v or v == token]
        assert leaks == [], f"{who} can read A's claim token"
        assert (
            scalar(conn, "SELECT has_function_privilege('pggit._claim_job(text, text[], integer, text)', 'EXECUTE')")
            is False
        )
    # no table or view anywhere exposes the claim's type (the claim functions alone return it)
    assert (
        scalar(
            db,
            """SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                          WHERE a.atttypid = 'pggit.claimed_job'::regtype AND c.relkind IN ('r', 'v', 'm', 'p')""",
        )
        == 0
    )
    # B guesses: small counters (what 0.1.0 handed out) and every value it can read
    before = job_row(db, job_id)
    guesses = [str(n) for n in range(0, 5)] + readable_values(host_b, "pggit.backup_jobs")
    accepted = [
        g for g in guesses if attempt(host_b, "SELECT pggit.finish_backup_job(%s, %s)", (job_id, g)) == [(True,)]
    ]
    assert accepted == [] and job_row(db, job_id) == before
    # the token is 64 hex digits, different on every claim
    assert len(token) == 64 and int(token, 16) >= 0


def test_another_host_cannot_release_a_workers_jobs_by_its_id_and_claim_them(db, hosts):
    host_a, host_b = hosts
    _, job_id = schedule_dump(db)
    claim_as(host_a, "host-a/1")
    before = job_row(db, job_id)
    assert query(host_b, "SELECT * FROM pggit.release_worker_backup_jobs('host-a/1')") == []
    assert job_row(db, job_id) == before
    assert claim_as(host_b, "host-b/1") is None, "A's running job stays A's"


def test_another_host_cannot_abandon_a_cancelled_claim_while_its_tool_still_stops(db, hosts):
    host_a, host_b = hosts
    _, first = schedule_stanza(db, "shared")
    _, second = schedule_stanza(db, "shared")
    held = claim_as(host_a, "host-a/1")
    db.cursor().execute("UPDATE pggit.backup_jobs SET status = 'cancelled' WHERE job_id = %s", (first,))
    before = job_row(db, first)
    assert attempt(host_b, "SELECT pggit.abandon_backup_job(%s, %s)", (first, held["claim_token"])) == [(False,)]
    assert job_row(db, first) == before and before["lease_expires_at"] is not None
    assert claim_as(host_b, "host-b/1") is None, "a second backup of the stanza must wait for A's tool"
    assert scalar(host_a, "SELECT pggit.abandon_backup_job(%s, %s)", (first, held["claim_token"])) is True
    assert claim_as(host_b, "host-b/1")["job_id"] == second


def test_another_login_cannot_complete_or_fail_a_guide_claim_by_job_id(db, hosts):
    host_a, host_b = hosts
    backup_id, job_id = schedule_dump(db)
    assert [r["job_id"] for r in query(host_a, "SELECT * FROM pggit.get_next_backup_job('host-a')")] == [job_id]
    before_job, before_backup = job_row(db, job_id), backup_row(db, backup_id)
    assert attempt(host_b, "SELECT pggit.complete_backup_job(%s, 'forged')", (job_id,)) == [(False,)]
    assert attempt(host_b, "SELECT pggit.fail_backup_job(%s, 'sabotage')", (job_id,)) == [(False,)]
    assert job_row(db, job_id) == before_job and backup_row(db, backup_id) == before_backup
    assert scalar(host_a, "SELECT pggit.complete_backup_job(%s, 'ok')", (job_id,)) is True
    assert backup_row(db, backup_id)["status"] == "completed"


# --- 011: a worker's location is one its job's tool makes ----------------------------------------


def schedule_barman(db, server):
    backup_id = scalar(db, "SELECT pggit.backup_barman(%s)", (server,))
    return backup_id, scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))


def schedule_custom(db):
    backup_id = scalar(db, "SELECT pggit.register_backup('custom-1', 'full', 'custom', 's3://bucket/custom-1')")
    return backup_id, scalar(
        db, "SELECT pggit.enqueue_backup_job(%s, 'nightly-backup --to s3', 'custom')", (backup_id,)
    )


SCHEDULERS = {
    "pg_dump": lambda db: schedule_dump(db),
    "pgbackrest": lambda db: schedule_stanza(db, "main"),
    "barman": lambda db: schedule_barman(db, "pg1"),
    "custom": schedule_custom,
}


@pytest.mark.parametrize(
    "tool, location",
    [
        ("pg_dump", "file:--role=postgres"),
        ("pg_dump", "--role=postgres"),
        ("pg_dump", "file://relative/x.dump"),
        ("pg_dump", "file:///backups/../etc/passwd"),
        ("pg_dump", "file:///backups//x.dump"),
        ("pg_dump", "file:///backups/./x.dump"),
        ("pg_dump", "/backups/x.dump"),
        ("pgbackrest", "pgbackrest://other-stanza/20250101-000000F"),
        ("pgbackrest", "pgbackrest://main/--force"),
        ("barman", "barman://other/20250101T000000"),
        ("barman", "barman://pg1/latest"),
        ("barman", "file:///backups/x"),
        ("custom", "s3://attacker/elsewhere"),
    ],
)
def test_a_worker_cannot_record_a_location_its_jobs_tool_does_not_make(db, hosts, tool, location):
    host_a, _ = hosts
    backup_id, job_id = SCHEDULERS[tool](db)
    token = claim_as(host_a, "host-a", [tool])["claim_token"]
    before_job, before_backup = job_row(db, job_id), backup_row(db, backup_id)
    with pytest.raises(psycopg2.Error) as caught:
        host_a.cursor().execute(
            "SELECT pggit.finish_backup_job(%s, %s, 'done', %s::jsonb)",
            (job_id, token, json.dumps({"location": location, "verified": True})),
        )
    assert caught.value.pgcode == "22023" and "p_backup.location" in caught.value.diag.message_primary
    assert caught.value.diag.message_hint
    assert (job_row(db, job_id), backup_row(db, backup_id)) == (before_job, before_backup)


@pytest.mark.parametrize(
    "tool, location",
    [
        ("pg_dump", "file:///var/lib/pggit/backups/main-20250101T000000Z.dump"),
        ("pgbackrest", "pgbackrest://main/20250101-000000F_20250102-000000I"),
        ("barman", "barman://pg1/20250101T000000"),
    ],
)
def test_a_worker_records_the_locations_its_jobs_tool_makes(db, hosts, tool, location):
    host_a, _ = hosts
    backup_id, job_id = SCHEDULERS[tool](db)
    token = claim_as(host_a, "host-a", [tool])["claim_token"]
    assert (
        scalar(
            host_a,
            "SELECT pggit.finish_backup_job(%s, %s, 'done', %s::jsonb)",
            (job_id, token, json.dumps({"location": location})),
        )
        is True
    )
    assert backup_row(db, backup_id)["location"] == location
