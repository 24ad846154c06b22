"""pg_dump: a logical backup of the queue's database (or one schema of it).

The dump is written under a temporary name and renamed only once pg_dump succeeded and the
archive was read back in full, so a file with the final name is always a complete dump.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection

from ..queue import ClaimedJob
from ..rows import one_row
from ..runner import RunResult
from .base import (
    Choice,
    Context,
    IntRange,
    InvalidJob,
    Invocation,
    Outcome,
    Parameter,
    allowed_output_dir,
    backup_stem,
    failure_from,
    libpq_env,
    open_regular,
    param_dir,
    param_text,
    partial_path,
    prepare_output_dir,
    run_check,
    sha256_of,
    spec_params,
    tool_run,
)

FORMATS = {"custom": ".dump", "directory": "", "tar": ".tar", "plain": ".sql"}
# the values pggit.backup_pg_dump validates (p_format, p_options.compression_level, .jobs)
FORMAT = Choice(tuple(FORMATS))
COMPRESSION_LEVEL = IntRange(0, 9)
JOBS = IntRange(1, 64)
PARAMETERS: Mapping[str, Parameter] = MappingProxyType(
    {"format": FORMAT, "compression_level": COMPRESSION_LEVEL, "jobs": JOBS}
)
SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # as pggit.backup_pg_dump's p_schema
# The snapshot session runs no code but the server's own: policies raise instead of running
# (row_security = off, as pg_dump does), and only pg_catalog resolves functions and operators.
SNAPSHOT_OPTIONS = "-c statement_timeout=120s -c lock_timeout=10s -c row_security=off -c search_path=pg_catalog,pg_temp"
_RLS_REFUSED = "would be affected by row-level security policy"
# Row counts for the restore drill are taken only up to this database size: counting is a full
# scan of every table, which on a large database would double the backup's I/O.
ROW_COUNT_MAX_BYTES = 2 << 30
ROW_COUNT_MAX_TABLES = 1000
_PLAIN_TRAILER = b"-- PostgreSQL database dump complete"


@dataclass(frozen=True)
class DumpParams:
    """A pg_dump job's parameters as pggit.backup_pg_dump validated them, checked again here
    (the spec is a row another login may have written): the adapter's only re-check."""

    format: str
    output_dir: str
    schema: str | None
    compression_level: int | None
    jobs: int | None

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> DumpParams:
        fmt = FORMAT.parse(params, "format")
        level = COMPRESSION_LEVEL.parse(params, "compression_level")
        if level is not None and fmt == "tar":
            raise InvalidJob(
                "parameter compression_level: pg_dump cannot compress the tar format "
                "(allowed: custom, directory or plain format)"
            )
        jobs = JOBS.parse(params, "jobs")
        if jobs is not None and fmt in ("tar", "plain"):
            raise InvalidJob(f"parameter jobs: not possible with the {fmt} format (allowed: directory, custom)")
        schema = param_text(
            params, "schema", SCHEMA_NAME, "the exact name of a schema (letters, digits, _)", required=False
        )
        return cls(fmt, param_dir(params), schema, level, jobs)


class PgDumpAdapter:
    name = "pg_dump"

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        params = DumpParams.parse(spec_params(job))
        fmt, level = params.format, params.compression_level
        directory = allowed_output_dir(params.output_dir, ctx.tool)
        prepare_output_dir(directory, ctx.tool)
        suffix = FORMATS[fmt] + (".gz" if fmt == "plain" and level else "")
        final = os.path.join(directory, backup_stem(job, ctx.now) + suffix)
        partial = partial_path(directory, job, suffix)

        argv = [ctx.tool.executable(), f"--format={fmt}", f"--file={partial}", "--no-password"]
        if params.schema:
            # quoted: pg_dump takes a pattern, and the quotes make it match this exact name
            argv.append(f'--schema="{params.schema}"')
        if level is not None:
            argv.append(f"--compress={level}")
        if params.jobs and fmt == "directory":
            argv.append(f"--jobs={params.jobs}")
        run = tool_run(ctx, job, argv, libpq_env(ctx.config.dsn, job.database_name), cwd=directory)
        snapshot = open_snapshot(ctx.config.dsn, job.database_name, params.schema)
        argv.append(f"--snapshot={snapshot.snapshot_id}")
        return Invocation(
            replace(run, argv=tuple(argv)),
            {
                "format": fmt,
                "final": final,
                "partial": partial,
                "compression_level": level,
                "jobs": params.jobs,
                "snapshot": snapshot,
            },
        )

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        notes = invocation.notes
        notes["snapshot"].close()
        if not result.ok:
            self.discard(invocation)
            if _RLS_REFUSED in result.stderr.text():
                return Outcome.failure(
                    failure_from(result, "pg_dump") + " -- the service's login cannot read "
                    "a table with row-level security; pg_dump needs a login with BYPASSRLS "
                    "(ALTER ROLE ... BYPASSRLS) to dump all of its rows",
                    retryable=False,
                )
            return Outcome.failure(failure_from(result, "pg_dump"))
        problem = self._verify(job, invocation, ctx)
        if problem:
            self.discard(invocation)
            return Outcome.failure(f"verification failed: {problem}")
        # hashed under the temporary name: a stop while hashing leaves no file with the final name
        checksum, size, files = sha256_of(notes["partial"], ctx)
        os.rename(notes["partial"], notes["final"])
        compression = _compression(notes["format"], notes["compression_level"])
        metadata = {
            "file": notes["final"],
            "format": notes["format"],
            "verified_by": self._verifier(notes),
            "duration_seconds": round(result.duration, 3),
        }
        if files:
            metadata["files"] = files
        if notes["jobs"]:
            metadata["restore_jobs"] = notes["jobs"]
        metadata.update(notes["snapshot"].facts())
        return Outcome.success(
            f"pg_dump {result.summary()}, {size} bytes, verified",
            backup_size=size,
            compressed_size=size if compression != "none" else None,
            compression_type=compression,
            checksum=checksum,
            verified=True,
            location=f"file://{notes['final']}",
            metadata=metadata,
        )

    def discard(self, invocation: Invocation) -> None:
        invocation.notes["snapshot"].close()
        partial = invocation.notes["partial"]
        if os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
        elif os.path.lexists(partial):
            os.unlink(partial)

    @staticmethod
    def _verifier(notes: Mapping[str, Any]) -> str:
        return "plain trailer" if notes["format"] == "plain" else "pg_restore --file=/dev/null"

    def _verify(self, job: ClaimedJob, invocation: Invocation, ctx: Context) -> str | None:
        """Read the whole archive back: pg_restore --list alone passes a truncated file."""
        notes = invocation.notes
        if notes["format"] == "plain":
            return _check_plain_trailer(notes["partial"], ctx)
        pg_restore = os.path.join(os.path.dirname(ctx.tool.executable()), "pg_restore")
        check = run_check(ctx, job, [pg_restore, "--file=/dev/null", notes["partial"]], {})
        return None if check.ok else failure_from(check, "pg_restore")


def _check_plain_trailer(path: str, ctx: Context | None = None) -> str | None:
    try:
        with open_regular(path) as raw, gzip.open(raw, "rb") if path.endswith(".gz.partial") else raw as handle:
            tail = b""
            while chunk := handle.read(1 << 20):
                tail = (tail + chunk)[-4096:]
                if ctx is not None:
                    ctx.checkpoint()
    except (OSError, EOFError) as exc:
        return f"cannot read {path}: {exc}"
    return None if _PLAIN_TRAILER in tail else "the dump does not end with pg_dump's completion line"


def _compression(fmt: str, level: int | None) -> str:
    if fmt == "tar" or level == 0 or (fmt == "plain" and not level):
        return "none"
    return "gzip"


class Snapshot:
    """A transaction whose snapshot pg_dump shares (--snapshot): the row counts recorded for the
    restore drill are those of exactly the data in the dump. Held open until pg_dump is done."""

    def __init__(
        self,
        conn: connection,
        snapshot_id: str,
        counts: dict[str, int] | None,
        skipped: str | None,
        uncounted: dict[str, str] | None = None,
    ) -> None:
        self.conn = conn
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
        if not self.conn.closed:
            self.conn.close()


def open_snapshot(dsn: str, dbname: str, schema: str | None) -> Snapshot:
    """Exports the snapshot pg_dump will use and counts each table's rows in it.

    Every object of the database may belong to someone else, so the session runs none of
    their code: with row_security = off a table whose policies would apply raises instead of
    running its owner's policy functions, and that table is recorded as not counted (with why);
    search_path is pg_catalog only and every name is qualified, so no function, operator or cast
    of another schema is picked. count(*) of a plain table runs nothing else."""
    conn = psycopg2.connect(
        dsn, dbname=dbname, application_name="pggit-supervisor snapshot", connect_timeout=10, options=SNAPSHOT_OPTIONS
    )
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_catalog.pg_export_snapshot(), pg_catalog.pg_database_size(pg_catalog.current_database())"
            )
            snapshot_id, size = one_row(cur)
            if size > ROW_COUNT_MAX_BYTES:
                return Snapshot(conn, snapshot_id, None, f"database larger than {ROW_COUNT_MAX_BYTES >> 30} GiB")
            cur.execute(
                """SELECT n.nspname::text, c.relname::text
                             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                            WHERE c.relkind = 'r' AND n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema'])
                              AND pg_catalog.left(n.nspname::text, 3) <> 'pg_'
                              AND (%(schema)s::text IS NULL OR n.nspname::text = %(schema)s::text)
                              AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
                            ORDER BY 1, 2 LIMIT %(limit)s::integer""",
                {"schema": schema, "limit": ROW_COUNT_MAX_TABLES + 1},
            )
            tables = cur.fetchall()
            if len(tables) > ROW_COUNT_MAX_TABLES:
                return Snapshot(conn, snapshot_id, None, f"more than {ROW_COUNT_MAX_TABLES} tables")
            counts: dict[str, int] = {}
            uncounted: dict[str, str] = {}
            for nspname, relname in tables:
                name = f"{nspname}.{relname}"
                # a savepoint per table: one refused count leaves the snapshot's transaction usable
                cur.execute("SAVEPOINT count_one")
                try:
                    cur.execute(
                        sql.SQL("SELECT pg_catalog.count(*) FROM {}.{}").format(
                            sql.Identifier(nspname), sql.Identifier(relname)
                        )
                    )
                    counts[name] = one_row(cur)[0]
                    cur.execute("RELEASE SAVEPOINT count_one")
                except psycopg2.Error as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT count_one")
                    uncounted[name] = _why_uncounted(exc)
        return Snapshot(conn, snapshot_id, counts, None, uncounted)
    except BaseException:
        conn.close()
        raise


def _why_uncounted(exc: psycopg2.Error) -> str:
    message = ((exc.diag.message_primary or str(exc)).strip().splitlines() or ["no message"])[0][:200]
    # 42501 with SELECT granted (the tables were chosen by has_table_privilege): row security
    if exc.pgcode == "42501" or _RLS_REFUSED in message:
        return (
            "row-level security: the policies of its owner would apply to this login, "
            f"and they are never run ({message})"
        )
    return message
