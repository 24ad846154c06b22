"""The snapshot a pg_dump job shares with pg_dump (--snapshot), and the row counts taken in
it for the restore drill: the counts are those of exactly the data in the dump."""

from __future__ import annotations

from typing import Any

import psycopg2
from psycopg2 import sql

from ..files import Checkpoint
from ..libpq import TickingSession
from ..rows import one_row

APPLICATION_NAME = "pggit-supervisor snapshot"
# The snapshot session runs no code but the server's own: policies raise instead of running
# (row_security = off, as pg_dump does), and only pg_catalog resolves functions and operators.
SNAPSHOT_OPTIONS = "-c statement_timeout=120s -c lock_timeout=10s -c row_security=off -c search_path=pg_catalog,pg_temp"
RLS_REFUSED = "would be affected by row-level security policy"
# Row counts for the restore drill are taken only up to this database size: counting is a full
# scan of every table, which on a large database would double the backup's I/O.
ROW_COUNT_MAX_BYTES = 2 << 30
ROW_COUNT_MAX_TABLES = 1000
_TABLES = """SELECT n.nspname::text, c.relname::text
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema'])
                AND pg_catalog.left(n.nspname::text, 3) <> 'pg_'
                AND (%(schema)s::text IS NULL OR n.nspname::text = %(schema)s::text)
                AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
              ORDER BY 1, 2 LIMIT %(limit)s::integer"""


class Snapshot:
    """A transaction whose snapshot pg_dump shares (--snapshot). Held open until pg_dump is done."""

    def __init__(
        self,
        session: TickingSession,
        snapshot_id: str,
        counts: dict[str, int] | None,
        skipped: str | None,
        uncounted: dict[str, str] | None = None,
    ) -> None:
        self.session = session
        self.snapshot_id = snapshot_id
        self.counts = counts
        self.skipped = skipped
        self.uncounted = uncounted or {}

    def facts(self) -> dict:
        if self.counts is None:
            return {"row_counts_skipped": self.skipped}
        facts: dict[str, Any] = {"row_counts": self.counts}
        if self.uncounted:
            facts["row_counts_uncounted"] = self.uncounted
        return facts

    def close(self) -> None:
        self.session.close()


def open_snapshot(dsn: str, dbname: str, schema: str | None, checkpoint: Checkpoint | None = None) -> Snapshot:
    """Exports the snapshot pg_dump will use and counts each table's rows in it.

    Every object of the database may belong to someone else, so the session runs none of
    their code: with row_security = off a table whose policies would apply raises instead of
    running its owner's policy functions, and that table is recorded as not counted (with why);
    search_path is pg_catalog only and every name is qualified, so no function, operator or cast
    of another schema is picked. count(*) of a plain table runs nothing else.

    Counting a large table, or waiting for a lock on one, takes long: each query of the session
    calls `checkpoint` while it runs (libpq.TickingSession), so the worker stays alive, and a
    stop cancels the query on the server."""
    session = TickingSession(
        dsn, checkpoint, dbname=dbname, application_name=APPLICATION_NAME, options=SNAPSHOT_OPTIONS
    )
    try:
        session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur = session.execute(
            "SELECT pg_catalog.pg_export_snapshot(), pg_catalog.pg_database_size(pg_catalog.current_database())"
        )
        snapshot_id, size = one_row(cur)
        if size > ROW_COUNT_MAX_BYTES:
            return Snapshot(session, snapshot_id, None, f"database larger than {ROW_COUNT_MAX_BYTES >> 30} GiB")
        tables = session.execute(_TABLES, {"schema": schema, "limit": ROW_COUNT_MAX_TABLES + 1}).fetchall()
        if len(tables) > ROW_COUNT_MAX_TABLES:
            return Snapshot(session, snapshot_id, None, f"more than {ROW_COUNT_MAX_TABLES} tables")
        counts: dict[str, int] = {}
        uncounted: dict[str, str] = {}
        for nspname, relname in tables:
            name = f"{nspname}.{relname}"
            # a savepoint per table: one refused count leaves the snapshot's transaction usable
            session.execute("SAVEPOINT count_one")
            try:
                query = sql.SQL("SELECT pg_catalog.count(*) FROM {}.{}").format(
                    sql.Identifier(nspname), sql.Identifier(relname)
                )
                counts[name] = one_row(session.execute(query))[0]
                session.execute("RELEASE SAVEPOINT count_one")
            except psycopg2.Error as exc:
                session.execute("ROLLBACK TO SAVEPOINT count_one")
                uncounted[name] = _why_uncounted(exc)
        return Snapshot(session, snapshot_id, counts, None, uncounted)
    except BaseException:
        session.close()
        raise


def _why_uncounted(exc: psycopg2.Error) -> str:
    message = ((exc.diag.message_primary or str(exc)).strip().splitlines() or ["no message"])[0][:200]
    # 42501 with SELECT granted (the tables were chosen by has_table_privilege): row security
    if exc.pgcode == "42501" or RLS_REFUSED in message:
        return (
            "row-level security: the policies of its owner would apply to this login, "
            f"and they are never run ({message})"
        )
    return message
