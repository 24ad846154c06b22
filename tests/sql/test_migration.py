"""Upgrading a 0.1.0 database gives exactly what a fresh install of today's files gives, and the
files released in 0.1.0 are never edited (numbered files are append-only from 0.1.0 on).

0.1.0 is read from git (its numbered files and its installer, pggit_supervisor/schema.py), not
from today's tree: a copy of today's files could not show drift. Each install gets a cluster
of its own, because roles and their memberships belong to the cluster, not to a database.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest

from helpers.cluster import Cluster
from helpers.release_0_1_0 import ROOT, install_0_1_0, released_files
from helpers.schema_snapshot import differences, read, snapshot
from pggit_supervisor import schema


def new_database(cluster: Cluster, name: str) -> str:
    admin = psycopg2.connect(cluster.dsn)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return cluster.dsn_for(name)


@pytest.fixture(scope="module")
def upgraded_and_fresh(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(a 0.1.0 database upgraded by today's installer, a fresh install), on two clusters."""
    clusters = [Cluster(), Cluster()]
    try:
        for cluster in clusters:
            cluster.start()
        upgraded = new_database(clusters[0], "pggit")
        applied_by_0_1_0 = install_0_1_0(upgraded, tmp_path_factory.mktemp("schema-0.1.0"))
        assert [m.version for m in applied_by_0_1_0] == list(range(1, 9)), "0.1.0 had files 001..008"
        schema.install(upgraded, log=lambda *_: None)
        fresh = new_database(clusters[1], "pggit")
        schema.install(fresh, log=lambda *_: None)
        yield upgraded, fresh
    finally:
        for cluster in clusters:
            cluster.remove()


def test_every_file_released_in_0_1_0_is_byte_identical_today():
    released = released_files()
    assert len(released) == 9, sorted(released)
    edited = [
        name
        for name, content in released.items()
        if not (ROOT / "schema" / name).is_file() or (ROOT / "schema" / name).read_bytes() != content
    ]
    assert not edited, (
        f"released schema files changed since 0.1.0: {edited}; numbered files are append-only: "
        "put the change in a new numbered file"
    )


def test_upgrade_from_0_1_0_gives_the_schema_of_a_fresh_install(upgraded_and_fresh):
    upgraded, fresh = (snapshot(dsn) for dsn in upgraded_and_fresh)

    assert any("backup_pg_dump" in line for line in fresh["functions"]), "the snapshot sees the schema"
    recorded = [int(line.split(" | ")[0]) for line in fresh["recorded migrations"]]  # lines sort as text
    assert max(recorded) == schema.migrations()[-1].version, "the fresh install has today's newest file"
    differ = differences(fresh, upgraded)
    assert not differ, "the upgraded 0.1.0 database differs from a fresh install:\n" + differ


def test_schema_comparison_names_a_changed_grant_default_and_function(upgraded_and_fresh):
    _, fresh = upgraded_and_fresh
    before = snapshot(fresh)
    conn = psycopg2.connect(fresh)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT format('%s(%s)', oid::regproc, pg_get_function_identity_arguments(oid)) "
            "FROM pg_proc WHERE proname = 'backup_pg_dump' AND pronamespace = 'pggit'::regnamespace"
        )
        function = cur.fetchone()[0]
        cur.execute("BEGIN")
        cur.execute(f"REVOKE EXECUTE ON FUNCTION {function} FROM pggit_backup_operator")
        cur.execute("ALTER TABLE pggit.backup_jobs ALTER COLUMN priority SET DEFAULT 42")
        cur.execute(f"ALTER FUNCTION {function} SET work_mem = '1MB'")
        try:
            changed = read(conn)
        finally:
            cur.execute("ROLLBACK")
    conn.close()

    report = differences(before, changed)
    assert "functions: fresh install" in report and "work_mem=1MB" in report
    assert "pggit_backup_operator" in report, "the revoked grant is named"
    assert "columns: fresh install" in report and "42" in report
