"""Restore drills (pggit.schedule_restore_test), run in a sandbox (see `sandbox`): a pg_dump
backup is restored with pg_restore into a throwaway cluster made by initdb and every table's row
count compared with the counts recorded at dump time; a pg_basebackup backup is laid out as the
throwaway cluster's data directory, started and queried once it has finished recovery. Both run
as the unprivileged drill user, in a network namespace of their own (no network at all),
reachable only over a private Unix socket, and are stopped and deleted whatever happens. A
drill that fails is a finding about the backup: permanent."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import psycopg2
from psycopg2 import sql

# restore imports the tools package too: bind the modules, use their names at call time
from .. import restore, sandbox
from ..queue import ClaimedJob
from ..rows import one_row
from ..runner import RunResult
from .base import Context, InvalidJob, Invocation, Outcome, failure_from, give_to, run_check, tool_run

DRILL_DATABASE = "drill"
# a restored table is counted by the sandbox's superuser; a hostile table must not hang the drill
COUNT_TIMEOUT = "300s"


class RestoreTestAdapter:
    name = "restore_test"

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        params = job.params
        metadata = params.get("backup_metadata")
        backup = restore.Backup(
            str(params.get("backup_id")),
            str(params.get("backup_tool")),
            "completed",
            str(params.get("location", "")),
            metadata if isinstance(metadata, dict) else {},
        )
        if backup.tool not in ("pg_dump", "pg_basebackup"):
            raise InvalidJob(f"backup_tool {backup.tool[:40]!r} has no restore drill (allowed: pg_dump, pg_basebackup)")
        try:
            # the row could name any file: only what lies where this tool may write is restored
            source = restore.confine(backup, ctx.tool)
            if backup.tool == "pg_dump":
                restore.dump_format(backup)
            box = sandbox.create(ctx.config.drill_user, sandbox.server_bin_dir(ctx.tool.path))
        except (restore.RestoreError, sandbox.SandboxError) as exc:
            raise InvalidJob(str(exc)) from None
        notes: dict[str, Any] = {"backup": backup, "source": source, "sandbox": box}
        try:
            return self._prepare(job, ctx, backup, source, box, notes)
        except BaseException:
            sandbox.remove(box)  # nothing half-made stays
            raise

    def _prepare(
        self,
        job: ClaimedJob,
        ctx: Context,
        backup: restore.Backup,
        source: str,
        box: sandbox.Sandbox,
        notes: dict[str, Any],
    ) -> Invocation:
        # The first step copies the backup as the tool's user (who may read it) into the sandbox;
        # the drill user gets that copy and nothing else of the backup directories.
        if backup.tool == "pg_dump":
            if restore.dump_format(backup) == "plain" and source.endswith(".gz"):
                # decompressed by us from the confined file, then handed over: nothing to copy
                notes["script"] = restore.plain_script(source, box.input, None)
                return Invocation(tool_run(ctx, job, ["/bin/true"], {}), notes)
            argv = ["/bin/cp", "-R", "-P", "--", source, box.input + "/"]
            give_to(box.input, ctx.tool.run_as)  # written by the tool's user, then given to the drill user
            return Invocation(tool_run(ctx, job, argv, {}), notes)
        try:
            steps = restore.copy_basebackup_steps(backup, source, box.data)
        except restore.RestoreError as exc:
            raise InvalidJob(str(exc)) from None
        notes["steps"] = steps[1:]
        give_to(box.data, ctx.tool.run_as)
        return Invocation(tool_run(ctx, job, steps[0], {}), notes)

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        try:
            if not result.ok:
                return Outcome.failure(
                    failure_from(result, "copying the backup into the drill's sandbox:"), retryable=False
                )
            notes = invocation.notes
            backup: restore.Backup = notes["backup"]
            try:
                if backup.tool == "pg_dump":
                    return self._restore_and_count(job, notes, ctx)
                return self._start_and_query(job, notes, ctx)
            except (sandbox.SandboxError, restore.RestoreError) as exc:
                return Outcome.failure(str(exc), retryable=False)
            except psycopg2.Error as exc:
                return Outcome.failure(
                    "the drill's sandbox refused a query: " + " ".join(str(exc).split()), retryable=False
                )
        finally:
            self.discard(invocation)

    def discard(self, invocation: Invocation) -> None:
        sandbox.remove(invocation.notes["sandbox"])

    # -- pg_dump: restore into a fresh cluster, count rows -----------------------------------

    def _restore_and_count(self, job: ClaimedJob, notes: Any, ctx: Context) -> Outcome:
        box: sandbox.Sandbox = notes["sandbox"]
        backup: restore.Backup = notes["backup"]
        as_drill = dict(run_as=box.user, cwd=box.root)
        sandbox.give_tree(box.input, box.user, mode_files=0o400, mode_dirs=0o500)
        made = run_check(ctx, job, box.initdb_argv(), {}, **as_drill)
        if not made.ok:
            return Outcome.failure(failure_from(made, "initdb of the drill's sandbox:"), retryable=False)
        not_started = _start_server(ctx, job, box, "starting the drill's sandbox:", sandbox.SUPERUSER)
        if not_started:
            return not_started
        _prepare_drill_database(box, ctx.config.dsn, backup)
        if "script" in notes:
            dump = notes["script"]
        else:
            dump = os.path.join(box.input, os.path.basename(notes["source"]))
        argv = restore.dump_restore_argv(backup, box.bin_dir, dump, DRILL_DATABASE, None)
        restored = run_check(ctx, job, argv, box.libpq_env(sandbox.SUPERUSER, DRILL_DATABASE), **as_drill)
        if not restored.ok:
            return Outcome.failure(failure_from(restored, "restore"), retryable=False)
        return _check_dump(box, backup)

    # -- pg_basebackup: start the copy, wait for the end of recovery, query it ---------------

    def _start_and_query(self, job: ClaimedJob, notes: Any, ctx: Context) -> Outcome:
        box: sandbox.Sandbox = notes["sandbox"]
        for argv in notes["steps"]:
            step = run_check(ctx, job, argv, {})
            if not step.ok:
                return Outcome.failure(
                    failure_from(step, "copying the backup into the drill's sandbox:"), retryable=False
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


def _prepare_drill_database(box: sandbox.Sandbox, source_dsn: str, backup: restore.Backup) -> None:
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
    restore.prepare_target_database(box.dsn(sandbox.SUPERUSER, DRILL_DATABASE), backup)


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


def _check_dump(box: sandbox.Sandbox, backup: restore.Backup) -> Outcome:
    expected = backup.metadata.get("row_counts")
    # the restored database is the dump's: a pinned search_path keeps its operators and functions
    # out of our queries (pg_temp is never searched for those), as in the row counts at dump time
    conn = psycopg2.connect(
        box.dsn(sandbox.SUPERUSER, DRILL_DATABASE),
        options=f"-c statement_timeout={COUNT_TIMEOUT} -c search_path=pg_catalog,pg_temp",
    )
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')""")
            tables = one_row(cur)[0]
            if not expected or not isinstance(expected, dict):
                return Outcome.success(
                    f"restored into the drill's sandbox: {tables} tables (no row counts recorded: "
                    f"{backup.metadata.get('row_counts_skipped', 'none')})",
                    metadata={"kind": "restore", "tables": tables},
                )
            differences = []
            for name, count in sorted(expected.items()):
                schema, _, table = str(name).partition(".")
                cur.execute(
                    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'",
                    (schema, table),
                )
                if cur.fetchone() is None:
                    differences.append(f"{name}: missing")
                    continue
                cur.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {}").format(sql.Identifier(schema, table)))
                restored = one_row(cur)[0]
                if restored != count:
                    differences.append(f"{name}: {count} rows at dump time, {restored} restored")
    finally:
        conn.close()
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
    from .pg_basebackup import read_pg_version

    try:
        version = read_pg_version(data_dir)
    except (OSError, ValueError) as exc:
        raise sandbox.SandboxError(f"the copied backup has no usable PG_VERSION: {exc}") from None
    if not os.path.isdir(f"/usr/lib/postgresql/{version}/bin"):
        raise sandbox.SandboxError(
            f"the backup is of PostgreSQL {version}, whose server binaries "
            f"(/usr/lib/postgresql/{version}/bin) are not installed here"
        )
    return version
