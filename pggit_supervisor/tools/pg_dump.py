"""pg_dump: a logical backup of the queue's database (or one schema of it).

The dump is written under a temporary name and renamed only once pg_dump succeeded and the
archive was read back in full, so a file with the final name is always a complete dump.
"""

from __future__ import annotations

import gzip
import os
import shutil

import psycopg2
from psycopg2 import sql

from ..queue import ClaimedJob
from ..runner import RunResult
from .base import (Context, InvalidJob, Invocation, Outcome, allowed_output_dir, backup_stem,
                   failure_from, libpq_env, partial_path, prepare_output_dir, run_check, sha256_of, tool_run)

FORMATS = {"custom": ".dump", "directory": "", "tar": ".tar", "plain": ".sql"}
# Row counts for the restore drill are taken only up to this database size: counting is a full
# scan of every table, which on a large database would double the backup's I/O.
ROW_COUNT_MAX_BYTES = 2 << 30
ROW_COUNT_MAX_TABLES = 1000
_PLAIN_TRAILER = b"-- PostgreSQL database dump complete"


class PgDumpAdapter:
    name = "pg_dump"

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        params = job.params
        fmt = params.get("format")
        if fmt not in FORMATS:
            raise InvalidJob(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
        directory = allowed_output_dir(str(params.get("output_dir", "")), ctx.tool)
        level = params.get("compression_level")
        suffix = FORMATS[fmt] + (".gz" if fmt == "plain" and level else "")
        final = os.path.join(directory, backup_stem(job, ctx.now) + suffix)
        partial = partial_path(directory, job, suffix)
        prepare_output_dir(directory, ctx.tool.run_as)

        argv = [ctx.tool.path, f"--format={fmt}", f"--file={partial}", "--no-password"]
        if params.get("schema"):
            # quoted: pg_dump takes a pattern, and the quotes make it match this exact name
            argv.append(f'--schema="{params["schema"]}"')
        if level is not None:
            argv.append(f"--compress={int(level)}")
        if params.get("jobs") and fmt == "directory":
            argv.append(f"--jobs={int(params['jobs'])}")
        snapshot = open_snapshot(ctx.config.dsn, job.database_name, params.get("schema"))
        argv.append(f"--snapshot={snapshot.snapshot_id}")
        env = libpq_env(ctx.config.dsn, job.database_name)
        return Invocation(tool_run(ctx, job, argv, env, cwd=directory),
                          {"format": fmt, "final": final, "partial": partial, "compression_level": level,
                           "snapshot": snapshot})

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        notes = invocation.notes
        notes["snapshot"].close()
        if not result.ok:
            self.discard(invocation)
            return Outcome.failure(failure_from(result, "pg_dump"))
        problem = self._verify(job, invocation, ctx)
        if problem:
            self.discard(invocation)
            return Outcome.failure(f"verification failed: {problem}")
        # hashed under the temporary name: a stop while hashing leaves no file with the final name
        checksum, size, files = sha256_of(notes["partial"], ctx)
        os.rename(notes["partial"], notes["final"])
        compression = _compression(notes["format"], notes["compression_level"])
        metadata = {"file": notes["final"], "format": notes["format"], "verified_by": self._verifier(notes),
                    "duration_seconds": round(result.duration, 3)}
        if files:
            metadata["files"] = files
        if job.params.get("jobs"):
            metadata["restore_jobs"] = job.params["jobs"]
        metadata.update(notes["snapshot"].facts())
        return Outcome.success(
            f"pg_dump {result.summary()}, {size} bytes, verified",
            backup_size=size, compressed_size=size if compression != "none" else None,
            compression_type=compression, checksum=checksum, verified=True, location=f"file://{notes['final']}",
            metadata=metadata)

    def discard(self, invocation: Invocation) -> None:
        invocation.notes["snapshot"].close()
        partial = invocation.notes["partial"]
        if os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
        elif os.path.lexists(partial):
            os.unlink(partial)

    @staticmethod
    def _verifier(notes) -> str:
        return "plain trailer" if notes["format"] == "plain" else "pg_restore --file=/dev/null"

    def _verify(self, job: ClaimedJob, invocation: Invocation, ctx: Context) -> str | None:
        """Read the whole archive back: pg_restore --list alone passes a truncated file."""
        notes = invocation.notes
        if notes["format"] == "plain":
            return _check_plain_trailer(notes["partial"], ctx)
        pg_restore = os.path.join(os.path.dirname(ctx.tool.path), "pg_restore")
        check = run_check(ctx, job, [pg_restore, "--file=/dev/null", notes["partial"]], {})
        return None if check.ok else failure_from(check, "pg_restore")


def _check_plain_trailer(path: str, ctx: Context | None = None) -> str | None:
    opener = gzip.open if path.endswith(".gz.partial") else open
    try:
        with opener(path, "rb") as handle:
            tail = b""
            while chunk := handle.read(1 << 20):
                tail = (tail + chunk)[-4096:]
                if ctx is not None:
                    ctx.checkpoint()
    except (OSError, EOFError) as exc:
        return f"cannot read {path}: {exc}"
    return None if _PLAIN_TRAILER in tail else "the dump does not end with pg_dump's completion line"


def _compression(fmt: str, level) -> str:
    if fmt == "tar" or level == 0 or (fmt == "plain" and not level):
        return "none"
    return "gzip"


class Snapshot:
    """A transaction whose snapshot pg_dump shares (--snapshot): the row counts recorded for the
    restore drill are those of exactly the data in the dump. Held open until pg_dump is done."""

    def __init__(self, conn, snapshot_id: str, counts: dict[str, int] | None, skipped: str | None) -> None:
        self.conn = conn
        self.snapshot_id = snapshot_id
        self.counts = counts
        self.skipped = skipped

    def facts(self) -> dict:
        if self.counts is not None:
            return {"row_counts": self.counts}
        return {"row_counts_skipped": self.skipped}

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()


def open_snapshot(dsn: str, dbname: str, schema: str | None) -> Snapshot:
    conn = psycopg2.connect(dsn, dbname=dbname, application_name="pggit-supervisor snapshot", connect_timeout=10,
                            options="-c statement_timeout=120s -c lock_timeout=10s")
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot(), pg_database_size(current_database())")
            snapshot_id, size = cur.fetchone()
            if size > ROW_COUNT_MAX_BYTES:
                return Snapshot(conn, snapshot_id, None, f"database larger than {ROW_COUNT_MAX_BYTES >> 30} GiB")
            cur.execute("""SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                              AND n.nspname NOT LIKE 'pg\\_%%' AND (%s::text IS NULL OR n.nspname = %s)
                              AND has_table_privilege(c.oid, 'SELECT')
                            ORDER BY 1, 2 LIMIT %s""", (schema, schema, ROW_COUNT_MAX_TABLES + 1))
            tables = cur.fetchall()
            if len(tables) > ROW_COUNT_MAX_TABLES:
                return Snapshot(conn, snapshot_id, None, f"more than {ROW_COUNT_MAX_TABLES} tables")
            counts = {}
            for nspname, relname in tables:
                cur.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(nspname), sql.Identifier(relname)))
                counts[f"{nspname}.{relname}"] = cur.fetchone()[0]
        return Snapshot(conn, snapshot_id, counts, None)
    except BaseException:
        conn.close()
        raise
