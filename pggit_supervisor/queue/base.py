"""The connection a Queue talks over, and its helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg2
from psycopg2.extensions import connection

from ..rows import one_row
from .fitting import SESSION_OPTIONS


def connect(dsn: str, application_name: str) -> connection:
    """An autocommit connection with keepalives, so a vanished server is noticed in seconds."""
    conn = psycopg2.connect(
        dsn,
        application_name=application_name[:63],
        connect_timeout=10,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        options=SESSION_OPTIONS,
    )
    conn.autocommit = True
    return conn


class Calls:
    """One connection and the two ways of reading an answer; each area's calls build on it."""

    conn: connection

    def _one(self, sql: str, params: Sequence[Any]) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return one_row(cur)[0]

    def _records(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Each row as a plain dict by column name. Built from tuples: RealDictCursor's rows cost
        a method call per column, 0.1 s of status with 10k targets."""
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            names = [column.name for column in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
