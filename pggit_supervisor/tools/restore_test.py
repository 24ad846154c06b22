"""Restore drills (pggit.schedule_restore_test), run in a sandbox (see `sandbox`): a pg_dump
backup is restored with pg_restore into a throwaway cluster made by initdb and every table's row
count compared with the counts recorded at dump time; a pg_basebackup backup is laid out as the
throwaway cluster's data directory, started and queried once it has finished recovery. Both run
as the unprivileged drill user, in a network namespace of their own (no network at all),
reachable only over a private Unix socket, and are stopped and deleted whatever happens. A
drill that fails is a finding about the backup: permanent.

The restore itself is the backup's adapter's plan (`restore_plan`, as `pggit-supervisor restore`
runs it), given here by the registry: a drill restores exactly as an operator would."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import psycopg2
from psycopg2 import sql

from .. import sandbox
from ..errors import JobError, invalid, one_line
from ..files import give_to, read_pg_version
from ..libpq import TickingSession
from ..queue import ClaimedJob
from ..rows import one_row
from ..runner import RunResult, RunSpec
from .base import Context, Invocation, Outcome, failure_from, run_check, run_spec, tool_run
from .params import job_timeout
from .restoring import Backup, RestorePlan, Restorer, RestoreTarget, confine, run_plan

DRILL_DATABASE = "drill"
# a restored table is counted by the sandbox's superuser; a hostile table must not hang the drill
COUNT_TIMEOUT = "300s"


@dataclass(frozen=True)
class DrillParams:
    """A drill job's parameters (pggit.schedule_restore_test copies them from the backup's row),
    parsed once: the backup to drill as a restore sees it."""

    backup: Backup

    @classmethod
    def parse(cls, params: Mapping[str, Any], tools: tuple[str, ...]) -> DrillParams:
        tool = str(params.get("backup_tool"))
        if tool not in tools:
            raise invalid(f"backup_tool {tool[:40]!r} has no restore drill (allowed: {', '.join(tools)})")
        metadata = params.get("backup_metadata")
        return cls(
            Backup(
                str(params.get("backup_id")),
                tool,
                "completed",
                str(params.get("location", "")),
                metadata if isinstance(metadata, dict) else {},
            )
        )


class RestoreTestAdapter:
    name = "restore_test"

    def __init__(self, *, database: Restorer, directory: Restorer) -> None:
        # the tool whose backups restore into a database, and the one restored as a data directory
        self._database = database
        self._directory = directory

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        backup = DrillParams.parse(job.params, (self._database.name, self._directory.name)).backup
        # the row could name any file: only what lies where this tool may write is restored
        source = confine(backup, ctx.tool)
        box = sandbox.create(ctx.config.drill_user, sandbox.server_bin_dir(ctx.tool.path))
        try:
            if backup.tool == self._database.name:
                return self._prepare_dump(job, ctx, backup, source, box)
            return self._prepare_copy(job, ctx, backup, box)
        except BaseException:
            sandbox.remove(box)  # nothing half-made stays
            raise

    def _prepare_dump(
        self, job: ClaimedJob, ctx: Context, backup: Backup, source: str, box: sandbox.Sandbox
    ) -> Invocation:
        """The run copies the dump as the tool's user (who may read it) into the sandbox; the
        drill user gets that copy and nothing else of the backup directories, and restores it
        with the client binaries next to the sandbox's server."""
        copy = os.path.join(box.input, os.path.basename(source))
        as_drill = replace(ctx.tool, run_as=box.user, path=os.path.join(box.bin_dir, "pg_dump"))
        target = RestoreTarget(dsn=box.dsn(sandbox.SUPERUSER, DRILL_DATABASE), source=copy, scratch=box.input)
        plan = self._database.restore_plan(backup, as_drill, target)
        give_to(box.input, ctx.tool.run_as)  # written by the tool's user, then given to the drill user
        argv = ["/bin/cp", "-R", "-P", "--", source, box.input + "/"]
        notes = {"backup": backup, "sandbox": box, "plan": plan, "started": time.monotonic()}
        return Invocation(tool_run(ctx, job, argv, {}), notes)

    def _prepare_copy(self, job: ClaimedJob, ctx: Context, backup: Backup, box: sandbox.Sandbox) -> Invocation:
        """The run is the plan's first step (as the tool's user), the others follow in collect."""
        plan = self._directory.restore_plan(backup, ctx.tool, RestoreTarget(directory=box.data))
        if plan.setup is not None:
            plan.setup()
        first, *rest = (_under_job_limits(step, job, ctx) for step in plan.steps)
        return Invocation(first, {"backup": backup, "sandbox": box, "steps": tuple(rest), "started": time.monotonic()})

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        try:
            if not result.ok:
                return Outcome.failure(
                    failure_from(result, "copying the backup into the drill's sandbox:"), retryable=False
                )
            notes = invocation.notes
            try:
                if "plan" in notes:
                    outcome = self._restore_and_count(job, notes["sandbox"], notes["backup"], notes["plan"], ctx)
                else:
                    outcome = self._start_and_query(job, notes["sandbox"], notes["steps"], ctx)
                return _timed(outcome, time.monotonic() - notes["started"])
            except JobError as exc:
                return Outcome.failure(exc.message, retryable=False)
            except psycopg2.Error as exc:
                return Outcome.failure("the drill's sandbox refused a query: " + one_line(exc), retryable=False)
        finally:
            self.discard(invocation)

    def discard(self, invocation: Invocation) -> None:
        sandbox.remove(invocation.notes["sandbox"])

    # -- a dump: restore into a fresh cluster, count rows ------------------------------------

    def _restore_and_count(
        self, job: ClaimedJob, box: sandbox.Sandbox, backup: Backup, plan: RestorePlan, ctx: Context
    ) -> Outcome:
        as_drill = dict(run_as=box.user, cwd=box.root)
        sandbox.give_tree(box.input, box.user, mode_files=0o400, mode_dirs=0o500)
        made = run_check(ctx, job, box.initdb_argv(), {}, **as_drill)
        if not made.ok:
            return Outcome.failure(failure_from(made, "initdb of the drill's sandbox:"), retryable=False)
        not_started = _start_server(ctx, job, box, "starting the drill's sandbox:", sandbox.SUPERUSER)
        if not_started:
            return not_started
        _prepare_drill_database(box, ctx.config.dsn)
        restored = run_plan(plan, lambda step: run_spec(ctx, replace(_under_job_limits(step, job, ctx), cwd=box.root)))
        if not restored.ok:
            return Outcome.failure(failure_from(restored, "restore"), retryable=False)
        return _check_dump(box, backup, ctx)

    # -- a base backup: start the copy, wait for the end of recovery, query it ---------------

    def _start_and_query(
        self, job: ClaimedJob, box: sandbox.Sandbox, steps: tuple[RunSpec, ...], ctx: Context
    ) -> Outcome:
        for step in steps:
            copied = run_spec(ctx, step)
            if not copied.ok:
                return Outcome.failure(
                    failure_from(copied, "copying the backup into the drill's sandbox:"), retryable=False
                )
        version = _pg_version(box.data)
        box = replace(box, bin_dir=f"/usr/lib/postgresql/{version}/bin")
        sandbox.forget_copied_settings(box.data)
        sandbox.give_tree(box.data, box.user)
        os.chmod(box.data, 0o700)
        superuser = _bootstrap_superuser(ctx.config.dsn)
        not_started = _start_server(ctx, job, box, "starting the restored copy:", superuser)
        if not_started:
            return not_started
        conn = psycopg2.connect(box.dsn(superuser, "postgres"))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_database WHERE datallowconn")
                databases = one_row(cur)[0]
        finally:
            conn.close()
        return Outcome.success(
            f"restored copy started in the drill's sandbox and answered: {databases} databases",
            metadata={"kind": "start-and-query", "pg_version": version, "databases": databases},
        )


def _timed(outcome: Outcome, seconds: float) -> Outcome:
    """A passed drill records how long the restore took, from the copy to the last query: the
    measured time to restore this backup (pggit.restore_drill_status.restore_seconds)."""
    if not outcome.ok:
        return outcome
    metadata = {**outcome.facts.get("metadata", {}), "restore_seconds": round(seconds, 3)}
    return replace(outcome, facts={**outcome.facts, "metadata": metadata})


def _under_job_limits(step: RunSpec, job: ClaimedJob, ctx: Context) -> RunSpec:
    """A restore step with the drill job's timeout instead of a restore's day."""
    return replace(step, timeout=job_timeout(job, ctx.tool))


def _prepare_drill_database(box: sandbox.Sandbox, source_dsn: str) -> None:
    """The drill's database, and every role of the source server as a NOLOGIN role with no
    rights, so that the dump's GRANTs, policies and (plain dumps) OWNER TOs restore."""
    source = psycopg2.connect(source_dsn, connect_timeout=10)
    try:
        with source.cursor() as cur:
            cur.execute(
                "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' AND rolname <> %s ORDER BY 1",
                (sandbox.SUPERUSER,),
            )
            roles = [row[0] for row in cur.fetchall()]
    finally:
        source.close()
    conn = psycopg2.connect(box.dsn(sandbox.SUPERUSER, "postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for role in roles:
                cur.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(DRILL_DATABASE)))
    finally:
        conn.close()


def _start_server(ctx: Context, job: ClaimedJob, box: sandbox.Sandbox, what: str, user: str) -> Outcome | None:
    """Starts the sandbox's server as the drill user and waits until `user` can query it; the
    failed ending (with why the namespace or the server refused) when it did not start."""
    started = run_check(ctx, job, box.start_argv(), {}, run_as=box.user, cwd=box.root)
    if not started.ok:
        return Outcome.failure(
            failure_from(started, what) + sandbox.namespace_hint(started) + sandbox.log_tail(box),
            retryable=False,
        )
    sandbox.wait_ready(box, user, checkpoint=ctx.checkpoint)
    return None


def _check_dump(box: sandbox.Sandbox, backup: Backup, ctx: Context) -> Outcome:
    """Every table's row count against the counts recorded at dump time. Counting a large table
    takes long: the session's queries keep the worker alive (libpq.TickingSession)."""
    expected = backup.metadata.get("row_counts")
    # the restored database is the dump's: a pinned search_path keeps its operators and functions
    # out of our queries (pg_temp is never searched for those), as in the row counts at dump time
    options = f"-c statement_timeout={COUNT_TIMEOUT} -c search_path=pg_catalog,pg_temp"
    with TickingSession(box.dsn(sandbox.SUPERUSER, DRILL_DATABASE), ctx.checkpoint, options=options) as session:
        tables = one_row(
            session.execute("""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')""")
        )[0]
        if not expected or not isinstance(expected, dict):
            return Outcome.success(
                f"restored into the drill's sandbox: {tables} tables (no row counts recorded: "
                f"{backup.metadata.get('row_counts_skipped', 'none')})",
                metadata={"kind": "restore", "tables": tables},
            )
        differences = []
        for name, count in sorted(expected.items()):
            schema, _, table = str(name).partition(".")
            found = session.execute(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'",
                (schema, table),
            ).fetchone()
            if found is None:
                differences.append(f"{name}: missing")
                continue
            query = sql.SQL("SELECT pg_catalog.count(*) FROM {}").format(sql.Identifier(schema, table))
            restored = one_row(session.execute(query))[0]
            if restored != count:
                differences.append(f"{name}: {count} rows at dump time, {restored} restored")
    if differences:
        return Outcome.failure("restored data differs from the dump: " + "; ".join(differences[:10]), retryable=False)
    return Outcome.success(
        f"restored into the drill's sandbox; row counts of {len(expected)} tables match",
        metadata={"kind": "restore-and-count", "tables": tables, "tables_compared": len(expected)},
    )


def _bootstrap_superuser(dsn: str) -> str:
    """The superuser initdb made on the backed-up server (oid 10): a base backup copy has it."""
    conn = psycopg2.connect(dsn, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolname FROM pg_roles WHERE oid = 10")
            return one_row(cur)[0]
    finally:
        conn.close()


def _pg_version(data_dir: str) -> str:
    try:
        version = read_pg_version(data_dir)
    except (OSError, ValueError) as exc:
        raise invalid(f"the copied backup has no usable PG_VERSION: {exc}") from None
    if not os.path.isdir(f"/usr/lib/postgresql/{version}/bin"):
        raise invalid(
            f"the backup is of PostgreSQL {version}, whose server binaries "
            f"(/usr/lib/postgresql/{version}/bin) are not installed here"
        )
    return version
