"""The snapshot a pg_dump job shares with pg_dump (--snapshot), and the row counts taken in
it for the restore drill: the counts are those of exactly the data in the dump."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
from psycopg2 import sql

from ..files import Checkpoint, join_keeping_lease
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


# close() waits this long for the counting thread to see its stop (within libpq.POLL_SECONDS:
# its session's own checkpoint cancels the running count); a thread still stuck after it (a
# cancel blocked on a dead network path) is left to end by itself, never joined for ever
_STOP_WAIT_SECONDS = 3.0


class _Stopping(Exception):
    """Raised by the counting thread's own checkpoint once close() asked it to stop."""


class Snapshot:
    """A transaction whose snapshot pg_dump shares (--snapshot). Held open until pg_dump is done.

    The row counts are taken in a thread of their own on the snapshot's session while pg_dump
    runs (issue 12 figure 4: counted first, they were 0.1 s of a 1 s dump of 308 MB; both read the
    same tables, from the same snapshot, on two cores at once). The thread only ever touches
    that session; the lease is kept by the worker's own thread: the tool's watch loop while
    pg_dump runs, then `settle` while the counts outlast it. `close` cancels unfinished counts
    on the server and waits for the thread, so nothing of the snapshot outlives its job."""

    def __init__(
        self,
        session: TickingSession,
        snapshot_id: str,
        checkpoint: Checkpoint | None,
        skipped: str | None = None,
        tables: list[tuple[str, str]] | None = None,
    ) -> None:
        self.session = session
        self.snapshot_id = snapshot_id
        self.checkpoint = checkpoint
        self.skipped = skipped
        self.counts: dict[str, int] | None = None  # set once every table was counted
        self.uncounted: dict[str, str] = {}
        # why the counts failed (the session was lost), for the job's result line: a drill of
        # this backup can only restore, not compare counts, and an operator should see that
        self.count_failure: str | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._counter: threading.Thread | None = None
        if tables is not None and skipped is None:
            # from here on the session is the thread's: its queries call the thread's own
            # checkpoint, which stops them once close() says so (TickingSession cancels the
            # running statement on the server and closes the connection)
            session.set_checkpoint(self._stopping)
            self._counter = threading.Thread(target=self._count, args=(tables,), name="row-counts", daemon=True)
            self._counter.start()

    def _stopping(self) -> None:
        if self._stop.is_set():
            raise _Stopping

    def _count(self, tables: list[tuple[str, str]]) -> None:
        counts: dict[str, int] = {}
        try:
            for nspname, relname in tables:
                self._stopping()
                name = f"{nspname}.{relname}"
                # a savepoint per table: one refused count leaves the snapshot's transaction usable
                self.session.execute("SAVEPOINT count_one")
                try:
                    query = sql.SQL("SELECT pg_catalog.count(*) FROM {}.{}").format(
                        sql.Identifier(nspname), sql.Identifier(relname)
                    )
                    counts[name] = one_row(self.session.execute(query))[0]
                    self.session.execute("RELEASE SAVEPOINT count_one")
                except psycopg2.Error as exc:
                    if self._stop.is_set() or self.session.closed:
                        raise
                    self.session.execute("ROLLBACK TO SAVEPOINT count_one")
                    self.uncounted[name] = _why_uncounted(exc)
            self.counts = counts
        except _Stopping:
            return
        except psycopg2.Error as exc:
            # the session itself failed (connection lost, server restart): the dump does not
            # depend on the counts, so the backup keeps its verification and says why it has none
            if not self._stop.is_set():
                self.count_failure = f"row counts failed: {_why_uncounted(exc)}"
        except BaseException as exc:  # a bug: handed to the job's thread by settle()
            self._error = exc

    def settle(self) -> None:
        """Waits for the counts, calling the checkpoint meanwhile (a count waiting for a lock
        can take minutes); a stop from the checkpoint cancels them and is raised."""
        counter = self._counter
        if counter is None:
            return
        try:
            join_keeping_lease(counter, self.checkpoint)
        except BaseException:
            self.close()
            raise
        self._counter = None
        if self._error is not None:
            raise self._error

    def facts(self) -> dict:
        self.settle()
        if self.counts is None:
            return {"row_counts_skipped": self.skipped or self.count_failure or "row counts did not finish"}
        facts: dict[str, Any] = {"row_counts": self.counts}
        if self.uncounted:
            facts["row_counts_uncounted"] = self.uncounted
        return facts

    def close(self) -> None:
        counter = self._counter
        if counter is not None and counter.is_alive():
            self._stop.set()
            counter.join(_STOP_WAIT_SECONDS)
            if counter.is_alive():
                return  # its own checkpoint closes the session once its cancel returns
        self.session.close()


def open_snapshot(dsn: str, dbname: str, schema: str | None, checkpoint: Checkpoint | None = None) -> Snapshot:
    """Exports the snapshot pg_dump will use and starts counting each table's rows in it.

    Every object of the database may belong to someone else, so the session runs none of
    their code: with row_security = off a table whose policies would apply raises instead of
    running its owner's policy functions, and that table is recorded as not counted (with why);
    search_path is pg_catalog only and every name is qualified, so no function, operator or cast
    of another schema is picked. count(*) of a plain table runs nothing else.

    The export and the table list call `checkpoint` while they run, as every query of the job's
    own thread does; the counts run in the Snapshot's thread, which must not touch the worker's
    connection: Snapshot.settle keeps the lease while they finish, and a stop there (or close())
    cancels them."""
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
            return Snapshot(session, snapshot_id, checkpoint, f"database larger than {ROW_COUNT_MAX_BYTES >> 30} GiB")
        tables = session.execute(_TABLES, {"schema": schema, "limit": ROW_COUNT_MAX_TABLES + 1}).fetchall()
        if len(tables) > ROW_COUNT_MAX_TABLES:
            return Snapshot(session, snapshot_id, checkpoint, f"more than {ROW_COUNT_MAX_TABLES} tables")
        return Snapshot(session, snapshot_id, checkpoint, tables=list(tables))
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
