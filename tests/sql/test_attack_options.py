"""Attacks with option text: an operator's p_options (and an admin's p_metadata) are stored in
the backup and job rows and sent with every claim, and 0.1.0 matched patterns over any amount of
text (40 MB of whitespace around a number took 8 s to check, was stored, and every claim then
sent 73 MB). 011 bounds every option before any pattern: the whole at 64 KiB, a string at 256
characters, a number at 32. Each call is made by a real operator or admin login.
"""

from __future__ import annotations

import json

import psycopg2
import pytest

from helpers.db import ADMIN, scalar

OPERATOR = "pggit_backup_operator"


def rows(db) -> tuple[int, int]:
    return (scalar(db, "SELECT count(*) FROM pggit.backups"), scalar(db, "SELECT count(*) FROM pggit.backup_jobs"))


PADDED = " " * (4 << 20) + "5"  # 4 MiB of whitespace around a valid priority


@pytest.mark.parametrize(
    "call, options, named",
    [
        (
            "SELECT pggit.backup_pg_dump('main', NULL, 'custom', '/backups', %s::jsonb)",
            {"priority": PADDED},
            "p_options",
        ),
        (
            "SELECT pggit.backup_pgbackrest('full', 'main', 'main', %s::jsonb)",
            {"priority": " " * 300 + "5"},
            "p_options.priority",
        ),
        (
            "SELECT pggit.backup_barman('pg1', 'main', %s::jsonb)",
            {"max_attempts": " " * 40 + "3"},
            "p_options.max_attempts",
        ),
        (
            "SELECT pggit.backup_pg_basebackup('main', '/backups', %s::jsonb)",
            {"timeout_seconds": " " * 1000 + "60"},
            "p_options.timeout_seconds",
        ),
        (
            "SELECT pggit.backup_pg_dump('main', NULL, 'custom', '/backups', %s::jsonb)",
            {"compression_level": "\n" * 500 + "9"},
            "p_options.compression_level",
        ),
    ],
)
def test_an_operator_cannot_store_unbounded_option_text(db, login, call, options, named):
    operator = login(OPERATOR)
    before = rows(db)
    with pytest.raises(psycopg2.Error) as caught:
        operator.cursor().execute(call, (json.dumps(options),))
    assert caught.value.pgcode == "22023"
    assert (
        caught.value.diag.message_primary.startswith(f"pggit: invalid {named}:")
        or f" {named}" in caught.value.diag.message_primary
    )
    assert caught.value.diag.message_hint
    assert rows(db) == before


def test_a_restore_drills_options_are_bounded_too(db, login):
    admin = login(ADMIN)
    backup_id = scalar(admin, "SELECT pggit.register_backup('d1', 'snapshot', 'pg_dump', '/backups/d1.dump')")
    assert scalar(admin, "SELECT pggit.complete_backup(%s, 1, 1, 'gzip')", (backup_id,)) is True
    operator = login(OPERATOR)
    with pytest.raises(psycopg2.Error) as caught:
        operator.cursor().execute(
            "SELECT pggit.schedule_restore_test(%s, %s::jsonb)", (backup_id, json.dumps({"timeout_seconds": PADDED}))
        )
    assert caught.value.pgcode == "22023" and "p_options" in caught.value.diag.message_primary
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs") == 0


def test_an_admins_custom_job_metadata_is_bounded(db, login):
    admin = login(ADMIN)
    backup_id = scalar(admin, "SELECT pggit.register_backup('c1', 'full', 'custom', 's3://b/c1')")
    with pytest.raises(psycopg2.Error) as caught:
        admin.cursor().execute(
            "SELECT pggit.enqueue_backup_job(%s, 'nightly', 'custom', 3, %s::jsonb)",
            (backup_id, json.dumps({"priority": " " * 100 + "5"})),
        )
    assert caught.value.pgcode == "22023" and "p_metadata.priority" in caught.value.diag.message_primary
    assert scalar(db, "SELECT count(*) FROM pggit.backup_jobs") == 0


def test_a_short_padded_number_is_still_accepted_as_the_guide_allows(db, login):
    operator = login(OPERATOR)
    backup_id = scalar(
        operator,
        "SELECT pggit.backup_pg_dump('main', NULL, 'custom', '/backups', %s::jsonb)",
        (json.dumps({"priority": " 7 "}),),
    )
    assert scalar(db, "SELECT priority FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)) == 7
