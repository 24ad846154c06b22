"""Restore drills (pggit.schedule_restore_test): restore a pg_dump backup into a scratch database
and compare every table's row count with the counts recorded at dump time, or lay a
pg_basebackup backup out in a scratch directory, start it on a free port and query it. The
scratch copy is always removed. A drill that fails is a finding about the backup: permanent."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import replace
from typing import Any

import psycopg2
from psycopg2 import sql

from ..queue import ClaimedJob
# restore imports the tools package too: bind the module, use its names at call time
from .. import restore
from ..runner import RunResult, RunSpec, run_tool
from .base import Context, InvalidJob, Invocation, Outcome, failure_from, give_to, job_timeout, run_check, tool_run
from .pg_basebackup import pg_bin_dir, read_pg_version

START_TIMEOUT_SECONDS = 300


class RestoreTestAdapter:
    name = "restore_test"

    def prepare(self, job: ClaimedJob, ctx: Context) -> Invocation:
        params = job.params
        backup = restore.Backup(str(params["backup_id"]), params["backup_tool"], "completed", params["location"],
                        params.get("backup_metadata") or {})
        # the row could name any file: only what lies where this tool may write is restored
        try:
            restore.confine(backup, ctx.tool)
        except restore.RestoreError as exc:
            raise InvalidJob(str(exc)) from None
        scratch = tempfile.mkdtemp(prefix="pggit-restore-test-")
        os.chmod(scratch, 0o700)
        give_to(scratch, ctx.tool.run_as)
        notes: dict[str, Any] = {"backup": backup, "scratch": scratch, "dsn": ctx.config.dsn,
                                 "run_as": ctx.tool.run_as}
        try:
            return self._prepare(job, ctx, backup, notes)
        except BaseException:
            self.discard(Invocation(RunSpec(("/bin/true",), {}, 1), notes))  # nothing half-made stays
            raise

    def _prepare(self, job: ClaimedJob, ctx: Context, backup: "restore.Backup", notes: dict[str, Any]) -> Invocation:
        scratch = notes["scratch"]
        if backup.tool == "pg_dump":
            database = f"pggit_restore_test_{job.job_id[:8]}"
            notes["database"] = database
            _admin(ctx.config.dsn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)"), database)
            _admin(ctx.config.dsn, sql.SQL("CREATE DATABASE {}"), database)
            restore.prepare_target_database(_with_db(ctx.config.dsn, database), backup)
            spec = restore.dump_restore_spec(backup, ctx.tool, _with_db(ctx.config.dsn, database), None, scratch)
            return Invocation(replace(spec, timeout=job_timeout(job, ctx.tool)), notes)
        data_dir = os.path.join(scratch, "data")
        os.mkdir(data_dir, 0o700)
        give_to(data_dir, ctx.tool.run_as)
        steps = restore.copy_basebackup_steps(backup, data_dir)
        notes.update(data_dir=data_dir, steps=steps[1:])
        return Invocation(tool_run(ctx, job, steps[0], {}), notes)

    def collect(self, job: ClaimedJob, invocation: Invocation, result: RunResult, ctx: Context) -> Outcome:
        try:
            if not result.ok:
                return Outcome.failure(failure_from(result, "restore"), retryable=False)
            if "database" in invocation.notes:
                return _check_dump(invocation.notes)
            return self._start_and_query(job, invocation, ctx)
        finally:
            self.discard(invocation)

    def discard(self, invocation: Invocation) -> None:
        notes = invocation.notes
        if "database" in notes:
            try:
                _admin(notes["dsn"], sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)"), notes["database"])
            except psycopg2.Error:
                pass
        data_dir = notes.get("data_dir")
        if data_dir and os.path.exists(os.path.join(data_dir, "postmaster.pid")):
            pg_ctl = os.path.join(pg_bin_dir(read_pg_version(data_dir)), "pg_ctl")
            run_tool(RunSpec((pg_ctl, "-D", data_dir, "-m", "immediate", "-w", "stop"), {}, 60,
                             run_as=notes["run_as"], kill_grace=5))
        shutil.rmtree(notes["scratch"], ignore_errors=True)

    def _start_and_query(self, job: ClaimedJob, invocation: Invocation, ctx: Context) -> Outcome:
        notes = invocation.notes
        data_dir = notes["data_dir"]
        for argv in notes["steps"]:
            step = run_check(ctx, job, argv, {})
            if not step.ok:
                return Outcome.failure(failure_from(step, "restore"), retryable=False)
        version = read_pg_version(data_dir)
        bin_dir = pg_bin_dir(version)
        port = _free_port()
        for leftover in ("standby.signal", "recovery.signal"):
            if os.path.exists(os.path.join(data_dir, leftover)):
                os.unlink(os.path.join(data_dir, leftover))
        # settings that keep the scratch copy private and quiet, whatever the source had
        fd = os.open(os.path.join(data_dir, "postgresql.auto.conf"), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        with os.fdopen(fd, "a") as conf:
            conf.write(f"\n# pggit-supervisor restore drill\nport = {port}\nlisten_addresses = ''\n"
                       f"unix_socket_directories = '{notes['scratch']}'\narchive_mode = off\n"
                       "shared_buffers = '32MB'\nmax_wal_senders = 0\nhot_standby = off\n")
        log_file = os.path.join(notes["scratch"], "postgres.log")
        started = run_check(ctx, job, [os.path.join(bin_dir, "pg_ctl"), "-D", data_dir, "-l", log_file, "-w",
                                       "-t", str(START_TIMEOUT_SECONDS), "start"], {})
        if not started.ok:
            return Outcome.failure(failure_from(started, "starting the restored copy:") + _tail(log_file), retryable=False)
        query = run_check(ctx, job, [os.path.join(bin_dir, "psql"), "-X", "-A", "-t", "-h", notes["scratch"],
                                     "-p", str(port), "-d", "postgres", "-c",
                                     "SELECT count(*) FROM pg_database WHERE datallowconn"], {})
        if not query.ok:
            return Outcome.failure(failure_from(query, "querying the restored copy:"), retryable=False)
        databases = int(query.stdout.text().strip() or 0)
        return Outcome.success(f"restored copy started on port {port} and answered: {databases} databases",
                               metadata={"kind": "start-and-query", "pg_version": version, "databases": databases})


def _check_dump(notes: dict[str, Any]) -> Outcome:
    backup: restore.Backup = notes["backup"]
    expected = backup.metadata.get("row_counts")
    conn = psycopg2.connect(_with_db(notes["dsn"], notes["database"]))
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')""")
            tables = cur.fetchone()[0]
            if not expected:
                return Outcome.success(f"restored into a scratch database: {tables} tables (no row counts recorded: "
                                       f"{backup.metadata.get('row_counts_skipped', 'none')})",
                                       metadata={"kind": "restore", "tables": tables})
            differences = []
            for name, count in sorted(expected.items()):
                schema, table = name.split(".", 1)
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, table).as_string(conn),))
                if not cur.fetchone()[0]:
                    differences.append(f"{name}: missing")
                    continue
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
                restored = cur.fetchone()[0]
                if restored != count:
                    differences.append(f"{name}: {count} rows at dump time, {restored} restored")
    finally:
        conn.close()
    if differences:
        return Outcome.failure("restored data differs from the dump: " + "; ".join(differences[:10]), retryable=False)
    return Outcome.success(f"restored into a scratch database; row counts of {len(expected)} tables match",
                           metadata={"kind": "restore-and-count", "tables": tables, "tables_compared": len(expected)})


def _admin(dsn: str, statement: sql.Composable, database: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement.format(sql.Identifier(database)))
    finally:
        conn.close()


def _with_db(dsn: str, database: str) -> str:
    return psycopg2.extensions.make_dsn(dsn, dbname=database)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return " | log: " + " | ".join(handle.read().splitlines()[-5:])
    except OSError:
        return ""
