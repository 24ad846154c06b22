"""pg_dump: a logical backup of the queue's database (or one schema of it), and its restore
with pg_restore (psql for a plain dump) into an empty database.

The dump is written under a temporary name and renamed only once pg_dump succeeded and the
archive was read back in full, so a file with the final name is always a complete dump.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import replace

import psycopg2

from ..config import ToolConfig
from ..errors import invalid
from ..files import (
    Checkpoint,
    allowed_output_dir,
    give_to,
    open_regular,
    partial_path,
    prepare_output_dir,
    remove_path,
    sha256_while,
)
from ..libpq import libpq_env
from ..queue import ClaimedJob
from ..runner import RunResult
from ..specs.pg_dump import DUMP_FORMATS, FORMATS, DumpParams
from .base import Context, Invocation, Outcome, Verification, backup_stem, failure_from, run_check, tool_run
from .params import spec_params
from .pg_dump_snapshot import RLS_REFUSED, open_snapshot
from .removing import Removal
from .restoring import Backup, RestorePlan, RestoresInto, RestoreTarget, confine

_PLAIN_TRAILER = b"-- PostgreSQL database dump complete"


class PgDumpAdapter:
    name = "pg_dump"
    restores_into: RestoresInto = "database"

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        params = DumpParams.parse(spec_params(job))
        fmt, level = params.format, params.compression_level
        directory = allowed_output_dir(params.output_dir, ctx.tool)
        prepare_output_dir(directory, ctx.tool)
        suffix = FORMATS[fmt] + (".gz" if fmt == "plain" and level else "")
        final = os.path.join(directory, backup_stem(job, ctx.now) + suffix)
        partial = partial_path(directory, job.job_id, suffix)

        argv = [ctx.tool.executable(), f"--format={fmt}", f"--file={partial}", "--no-password"]
        if params.schema:
            # quoted: pg_dump takes a pattern, and the quotes make it match this exact name
            argv.append(f'--schema="{params.schema}"')
        if level is not None:
            argv.append(f"--compress={level}")
        if params.jobs and fmt == "directory":
            argv.append(f"--jobs={params.jobs}")
        run = tool_run(ctx, job, argv, libpq_env(ctx.config.dsn, job.database_name), cwd=directory)
        snapshot = open_snapshot(ctx.config.dsn, job.database_name, params.schema, ctx.checkpoint)
        argv.append(f"--snapshot={snapshot.snapshot_id}")
        return Invocation(
            replace(run, argv=tuple(argv)),
            {"params": params, "final": final, "partial": partial, "snapshot": snapshot},
        )

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        notes = invocation.notes
        params: DumpParams = notes["params"]
        snapshot = notes["snapshot"]
        if result.ok:
            snapshot.settle()  # the row counts taken beside pg_dump, in its snapshot
        snapshot.close()
        if not result.ok:
            self.discard(invocation)
            if RLS_REFUSED in result.stderr.text():
                return Outcome.failure(
                    failure_from(result, "pg_dump") + " -- the service's login cannot read "
                    "a table with row-level security; pg_dump needs a login with BYPASSRLS "
                    "(ALTER ROLE ... BYPASSRLS) to dump all of its rows",
                    retryable=False,
                )
            return Outcome.failure(failure_from(result, "pg_dump"))
        # hashed under the temporary name, beside the verification that reads it too: a stop
        # while hashing leaves no file with the final name
        verification, digest = sha256_while(
            notes["partial"],
            ctx.checkpoint,
            lambda: self._verify(job, params.format, notes["partial"], ctx),
            lambda verification: verification.verified,
        )
        if not verification.verified or digest is None:
            self.discard(invocation)
            return verification.failure()
        checksum, size, files = digest
        os.rename(notes["partial"], notes["final"])
        compression = _compression(params.format, params.compression_level)
        metadata = {
            "file": notes["final"],
            "format": params.format,
            **verification.facts(),
            "duration_seconds": round(result.duration, 3),
        }
        if files:
            metadata["files"] = files
        if params.jobs:
            metadata["restore_jobs"] = params.jobs
        metadata.update(snapshot.facts())
        return Outcome.success(
            f"pg_dump {result.summary()}, {size} bytes, {verification.summary}"
            + (
                f"; {snapshot.count_failure} (a drill can restore it, not compare its counts)"
                if snapshot.count_failure
                else ""
            ),
            backup_size=size,
            compressed_size=size if compression != "none" else None,
            compression_type=compression,
            checksum=checksum,
            verified=verification.verified,
            location=f"file://{notes['final']}",
            metadata=metadata,
        )

    def discard(self, invocation: Invocation) -> None:
        invocation.notes["snapshot"].close()
        remove_path(invocation.notes["partial"])

    def _verify(self, job: ClaimedJob, fmt: str, partial: str, ctx: Context) -> Verification:
        """Read the whole archive back: pg_restore --list alone passes a truncated file."""
        if fmt == "plain":
            problem = _check_plain_trailer(partial, ctx.checkpoint)
            return Verification.failed(problem) if problem else Verification.passed("plain trailer")
        pg_restore = os.path.join(os.path.dirname(ctx.tool.executable()), "pg_restore")
        check = run_check(ctx, job, [pg_restore, "--file=/dev/null", partial], {})
        if not check.ok:
            return Verification.failed(failure_from(check, "pg_restore"))
        return Verification.passed("pg_restore --file=/dev/null")

    # -- restore: into an empty database ----------------------------------------------------

    def restore_plan(self, backup: Backup, tool: ToolConfig, target: RestoreTarget) -> RestorePlan:
        """pg_restore (psql for a plain dump) as the tool's user into the target database;
        `tool.path` names the client binaries' directory. A gzip'd plain dump is decompressed
        into target.scratch first (psql reads plain SQL only)."""
        if target.dsn is None:
            raise invalid("a pg_dump backup is restored into a database: give --target-dsn")
        source = target.source or confine(backup, tool)
        fmt = dump_format(backup)
        env = libpq_env(target.dsn)
        dbname = env.pop("PGDATABASE", None) or "postgres"
        compressed_script = fmt == "plain" and source.endswith(".gz")
        if compressed_script:
            if target.scratch is None:
                raise invalid(f"backup {backup.backup_id}: a compressed plain dump needs a scratch directory")
            script = os.path.join(target.scratch, "dump.sql")
        argv = dump_restore_argv(
            backup, os.path.dirname(tool.path or "/usr/bin/pg_dump"), script if compressed_script else source, dbname
        )
        jobs = restore_jobs(backup, target.jobs)
        if jobs and fmt in ("custom", "directory"):
            argv.insert(-1, f"--jobs={jobs}")
        target_dsn = target.dsn

        def setup() -> None:
            prepare_target_database(target_dsn, backup)
            if compressed_script:
                decompress(source, script, tool.run_as)

        return RestorePlan.of(tool, [argv], env, setup=setup)

    # -- removal: expiry step 2 --------------------------------------------------------------

    def removal_plan(self, backup: Backup, tool: ToolConfig) -> Removal:
        return Removal.files(self.name, backup, tool)


def dump_format(backup: Backup) -> str:
    """The dump's format as recorded; anything else is refused before an argv is built."""
    fmt = backup.metadata.get("format") or "custom"
    if fmt not in DUMP_FORMATS:
        raise invalid(
            f"backup {backup.backup_id}: metadata.format {str(fmt)[:40]!r} is not one of {', '.join(DUMP_FORMATS)}"
        )
    return fmt


def restore_jobs(backup: Backup, jobs: int | None) -> int | None:
    value = jobs if jobs is not None else backup.metadata.get("restore_jobs")
    if value is None:
        return None
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if not 1 <= number <= 64:
        raise invalid(
            f"backup {backup.backup_id}: restore jobs {str(value)[:20]!r} is not a number of "
            "parallel jobs (allowed: 1-64)"
        )
    return number


def dump_restore_argv(backup: Backup, bin_dir: str, source: str, dbname: str) -> list[str]:
    """pg_restore (or psql for a plain dump, given its decompressed script) into `dbname`."""
    if not os.path.isabs(source):
        raise invalid(f"backup {backup.backup_id}: {source!r} is not an absolute path")
    if dump_format(backup) == "plain":
        psql = os.path.join(bin_dir, "psql")
        return [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-d", dbname, "-f", source]
    return [os.path.join(bin_dir, "pg_restore"), "--exit-on-error", "--no-owner", f"--dbname={dbname}", source]


def prepare_target_database(dsn: str, backup: Backup) -> None:
    """A dump of the public schema alone starts with CREATE SCHEMA public, which an empty new
    database already has: drop that empty schema first (the target was checked empty)."""
    if (backup.metadata.get("params") or {}).get("schema") != "public":
        return
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("DROP SCHEMA IF EXISTS public")
    finally:
        conn.close()


def decompress(source: str, script: str, run_as: str | None) -> None:
    """The gzip'd plain dump `source` as plain SQL in `script`, given to `run_as`."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with gzip.open(os.fdopen(fd, "rb"), "rb") as compressed, open(script, "xb") as target:
        shutil.copyfileobj(compressed, target)
    give_to(script, run_as)


def _check_plain_trailer(path: str, checkpoint: Checkpoint | None = None) -> str | None:
    try:
        with open_regular(path) as raw, gzip.open(raw, "rb") if path.endswith(".gz.partial") else raw as handle:
            tail = b""
            while chunk := handle.read(1 << 20):
                tail = (tail + chunk)[-4096:]
                if checkpoint is not None:
                    checkpoint()
    except (OSError, EOFError) as exc:
        return f"cannot read {path}: {exc}"
    return None if _PLAIN_TRAILER in tail else "the dump does not end with pg_dump's completion line"


def _compression(fmt: str, level: int | None) -> str:
    if fmt == "tar" or level == 0 or (fmt == "plain" and not level):
        return "none"
    return "gzip"
