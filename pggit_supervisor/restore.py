"""Restoring backups, the other half of a backup: shared by `pggit-supervisor restore` and the
restore drill. A restore never writes into a target that holds anything."""

from __future__ import annotations

import gzip
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import psycopg2

from .config import ToolConfig
from .runner import RunResult, RunSpec, run_tool
from .tools.base import give_to, libpq_env
from .tools.pg_basebackup import TAR, extract_argv, tar_members

RESTORE_TIMEOUT = 86400.0


class RestoreError(Exception):
    """The restore cannot or must not run; the message says why and what to do."""


@dataclass(frozen=True)
class Backup:
    """The parts of a pggit.backups row a restore needs."""

    backup_id: str
    tool: str
    status: str
    location: str
    metadata: Mapping[str, Any]

    @property
    def path(self) -> str:
        parsed = urlparse(self.location)
        if parsed.scheme != "file":
            raise RestoreError(f"backup {self.backup_id}: location {self.location} is not a file:// path")
        return parsed.path


def confine(backup: Backup, tool: ToolConfig) -> None:
    """A file:// backup is restored only from under the tool's allowed_output_dirs (symlinks
    resolved): the path comes from a table row, and restoring runs it through pg_restore / psql."""
    from .tools.base import InvalidJob, allowed_output_dir
    try:
        allowed_output_dir(os.path.dirname(backup.path.rstrip("/")), tool)
    except InvalidJob as exc:
        raise RestoreError(f"backup {backup.backup_id}: {exc}") from None


def load_backup(dsn: str, backup_id: str) -> Backup:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT backup_id::text, backup_tool, status, location, metadata FROM pggit.backups "
                        "WHERE backup_id = %s::uuid", (backup_id,))
            row = cur.fetchone()
    except psycopg2.errors.InvalidTextRepresentation:
        raise RestoreError(f"{backup_id!r} is not a backup id (a UUID)") from None
    finally:
        conn.close()
    if row is None:
        raise RestoreError(f"no backup with id {backup_id}")
    backup = Backup(*row)
    if backup.status != "completed":
        raise RestoreError(f"backup {backup_id} is {backup.status}: only a completed backup can be restored")
    return backup


def check_empty_database(dsn: str) -> None:
    """Refuses a target database that holds anything beyond an empty public schema."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'""")
            relations = cur.fetchone()[0]
            cur.execute("""SELECT count(*) FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
                             AND nspname NOT LIKE 'pg\\_%'""")
            schemas = cur.fetchone()[0]
            cur.execute("SELECT current_database()")
            name = cur.fetchone()[0]
    finally:
        conn.close()
    if relations or schemas:
        raise RestoreError(f"target database {name} is not empty ({relations} relations, {schemas} schemas "
                           "besides public): restore into a new database (createdb) instead")


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


def check_empty_dir(path: str) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise RestoreError(f"target directory {path} is not empty: restore into a new or empty directory")


def dump_restore_spec(backup: Backup, tool: ToolConfig, target_dsn: str, jobs: int | None,
                      scratch: str) -> RunSpec:
    """pg_restore (or psql for a plain dump) of a pg_dump backup into the target database."""
    bin_dir = os.path.dirname(tool.path or "/usr/bin/pg_dump")
    fmt = backup.metadata.get("format")
    env = libpq_env(target_dsn)
    if fmt == "plain":
        script = backup.path
        if script.endswith(".gz"):
            script = os.path.join(scratch, "dump.sql")
            with gzip.open(backup.path, "rb") as source, open(script, "wb") as target:
                shutil.copyfileobj(source, target)
            give_to(script, tool.run_as)
        argv = [os.path.join(bin_dir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                "-f", script]
    else:
        jobs = jobs or backup.metadata.get("restore_jobs")
        argv = [os.path.join(bin_dir, "pg_restore"), "--exit-on-error", "--no-owner",
                f"--dbname={env.pop('PGDATABASE')}"]
        if jobs and fmt in ("custom", "directory"):
            argv.append(f"--jobs={int(jobs)}")
        argv.append(backup.path)
    return RunSpec(argv=tuple(argv), env=env, timeout=RESTORE_TIMEOUT, run_as=tool.run_as,
                   kill_grace=float(tool.kill_grace))


def restore_dump(backup: Backup, tool: ToolConfig, target_dsn: str, jobs: int | None = None,
                 on_tick: Callable[[], str | None] | None = None) -> RunResult:
    scratch = tempfile.mkdtemp(prefix="pggit-restore-")
    try:
        give_to(scratch, tool.run_as)
        return run_tool(dump_restore_spec(backup, tool, target_dsn, jobs, scratch), on_tick=on_tick)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def copy_basebackup_steps(backup: Backup, target_dir: str) -> list[list[str]]:
    """argv lists that lay a pg_basebackup backup out as a data directory in target_dir."""
    source = backup.path
    if backup.metadata.get("format", "plain") == "plain":
        return [["/bin/cp", "-a", "--", source + "/.", target_dir]]
    base, wal = tar_members(source)
    if base is None:
        raise RestoreError(f"backup {backup.backup_id}: no base.tar* in {source}")
    steps = [extract_argv(os.path.join(source, base), target_dir)]
    if wal:
        steps.append(["/bin/mkdir", "-p", os.path.join(target_dir, "pg_wal")])
        steps.append(extract_argv(os.path.join(source, wal), os.path.join(target_dir, "pg_wal")))
    return steps


def restore_basebackup(backup: Backup, tool: ToolConfig, target_dir: str,
                       on_tick: Callable[[], str | None] | None = None) -> RunResult:
    """Copies the backup into target_dir (created, mode 0700, owned by the tool's user)."""
    os.makedirs(target_dir, mode=0o700, exist_ok=True)
    os.chmod(target_dir, 0o700)
    give_to(target_dir, tool.run_as)
    result = None
    for argv in copy_basebackup_steps(backup, target_dir):
        result = run_tool(RunSpec(argv=tuple(argv), env={}, timeout=RESTORE_TIMEOUT, run_as=tool.run_as,
                                  kill_grace=float(tool.kill_grace)), on_tick=on_tick)
        if not result.ok:
            break
    return result


def describe(argv: list[str]) -> str:
    return shlex.join(argv)


__all__ = ["Backup", "RestoreError", "check_empty_database", "check_empty_dir", "copy_basebackup_steps",
           "describe", "dump_restore_spec", "load_backup", "prepare_target_database", "restore_basebackup",
           "restore_dump", "TAR"]
