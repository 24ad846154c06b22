"""Connection strings and the shorthands every SQL-speaking test uses."""

from __future__ import annotations

import psycopg2
import psycopg2.extras
import pytest


def make_dsn(host, port, user, dbname, password=None) -> str:
    parts = [f"host={host}", f"port={port}", f"user={user}", f"dbname={dbname}"]
    if password:
        parts.append(f"password={password}")
    return " ".join(parts)


def query(conn, sql, params=None):
    """All rows as dicts."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def refused(conn, statement, params=None) -> psycopg2.Error:
    """Runs a statement that must fail; returns the error."""
    with pytest.raises(psycopg2.Error) as caught:
        conn.cursor().execute(statement, params)
    return caught.value


# The package's roles (schema/), as a login is granted them
WORKER = "pggit_backup_worker"
ADMIN = "pggit_backup_admin"
