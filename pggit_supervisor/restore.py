"""Restoring backups, the other half of a backup: shared by `pggit-supervisor restore` and the
restore drill. A restore never writes into a target that holds anything."""

from __future__ import annotations

import gzip
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import psycopg2

from .config import ToolConfig
from .rows import one_row
from .runner import RunResult, RunSpec, run_tool
from .tools.base import give_to, libpq_env
from .tools.pg_basebackup import TAR, extract_argv, tar_members

RESTORE_TIMEOUT = 86400.0
DUMP_FORMATS = ("custom", "directory", "tar", "plain")


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
        """The backup's absolute, normalised path. The location is a table row's text: a
        relative path (`file:--role=postgres`) would resolve against the current directory
        and reach a tool's argv as an option, so only an absolute file:// path is accepted."""
        parsed = urlparse(self.location)
        shown = self.location if len(self.location) <= 200 else self.location[:197] + "..."
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise RestoreError(f"backup {self.backup_id}: location {shown!r} is not a file:// path on this host")
        path = parsed.path
        if not path.startswith("/") or "\0" in path or ".." in path.split("/") or parsed.query or parsed.fragment:
            raise RestoreError(
                f"backup {self.backup_id}: location {shown!r} is not an absolute file:// path "
                "(allowed: file:///absolute/path, without '..', ? or #)"
            )
        return os.path.normpath(path)


def confine(backup: Backup, tool: ToolConfig) -> str:
    """The real path of a file:// backup, which must lie below one of the tool's
    allowed_output_dirs (symlinks resolved, whatever the current directory): the path comes
    from a table row, and restoring hands it to pg_restore, psql, cp or tar."""
    path = backup.path
    real = os.path.realpath(path)
    for allowed in tool.allowed_output_dirs:
        root = os.path.realpath(allowed)
        if os.path.isabs(allowed) and real.startswith(root.rstrip("/") + "/"):
            return real
    shown = path if real == path else f"{path} (resolves to {real})"
    raise RestoreError(
        f"backup {backup.backup_id}: {shown} is not under tools.{tool.name}.allowed_output_dirs "
        f"(allowed: {', '.join(tool.allowed_output_dirs) or 'none'})"
    )


def dump_format(backup: Backup) -> str:
    """The dump's format as recorded; anything else is refused before an argv is built."""
    fmt = backup.metadata.get("format") or "custom"
    if fmt not in DUMP_FORMATS:
        raise RestoreError(
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
        raise RestoreError(
            f"backup {backup.backup_id}: restore jobs {str(value)[:20]!r} is not a number of "
            "parallel jobs (allowed: 1-64)"
        )
    return number


def load_backup(dsn: str, backup_id: str) -> Backup:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT backup_id::text, backup_tool, status, location, metadata FROM pggit.backups "
                "WHERE backup_id = %s::uuid",
                (backup_id,),
            )
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
                            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                              AND n.nspname NOT LIKE 'pg\\_%'""")
            relations = one_row(cur)[0]
            cur.execute("""SELECT count(*) FROM pg_namespace
                            WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
                              AND nspname NOT LIKE 'pg\\_%'""")
            schemas = one_row(cur)[0]
            cur.execute("SELECT current_database()")
            name = one_row(cur)[0]
    finally:
        conn.close()
    if relations or schemas:
        raise RestoreError(
            f"target database {name} is not empty ({relations} relations, {schemas} schemas "
            "besides public): restore into a new database (createdb) instead"
        )


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


# Roles whose rights a restored function could use to take more than the target database:
# superuser and CREATEROLE (make itself anything), and the roles that run programs or write
# files on the server as its OS user.
_POWERFUL_ROLES = ("pg_execute_server_program", "pg_write_server_files")
TRUST_FLAG = "--trust-backup-contents"


def powerful_rights(dsn: str) -> list[str]:
    """What the target login could hand to code inside a dump: its own or inherited
    SUPERUSER or CREATEROLE, membership in roles that run programs or write server files."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                """SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolname = session_user
                             FROM pg_roles r
                            WHERE pg_has_role(session_user, r.oid, 'MEMBER')
                              AND (r.rolsuper OR r.rolcreaterole OR r.rolname = ANY(%s))
                            ORDER BY 1""",
                (list(_POWERFUL_ROLES),),
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    if any(superuser and itself for _name, superuser, _createrole, itself in rows):
        return ["SUPERUSER (the login itself)"]  # a superuser is a member of every role: say only that
    found = []
    for name, superuser, createrole, itself in rows:
        what = "SUPERUSER" if superuser else "CREATEROLE" if createrole else "member"
        found.append(f"{what} (the login itself)" if itself else f"{what} through role {name}")
    return found


def check_target_login(dsn: str, trust_contents: bool) -> None:
    """pg_restore runs the dump's functions (CHECK constraints, defaults, index expressions)
    with the target login's rights: a powerful login is refused unless the operator says the
    backup's contents are trusted."""
    rights = powerful_rights(dsn)
    if rights and not trust_contents:
        raise RestoreError(
            "the target login has rights a restored function could take over: "
            + "; ".join(rights)
            + ". A dump carries functions written by any user who could create objects in the backed-up "
            "database, and pg_restore runs them as this login. Restore as a login without SUPERUSER or "
            f"CREATEROLE (the owner of the new database), or pass {TRUST_FLAG} if you trust everyone who "
            "could write into that database"
        )


def plain_script(source: str, scratch: str, run_as: str | None) -> str:
    """psql reads plain SQL only: a gzip'd plain dump is decompressed into scratch first."""
    if not source.endswith(".gz"):
        return source
    script = os.path.join(scratch, "dump.sql")
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with gzip.open(os.fdopen(fd, "rb"), "rb") as compressed, open(script, "xb") as target:
        shutil.copyfileobj(compressed, target)
    give_to(script, run_as)
    return script


def dump_restore_argv(backup: Backup, bin_dir: str, source: str, dbname: str, jobs: int | None) -> list[str]:
    """pg_restore (or psql for a plain dump, given its decompressed script) into `dbname`."""
    fmt = dump_format(backup)
    if not os.path.isabs(source):
        raise RestoreError(f"backup {backup.backup_id}: {source!r} is not an absolute path")
    if fmt == "plain":
        return [
            os.path.join(bin_dir, "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "-d",
            dbname,
            "-f",
            source,
        ]
    argv = [os.path.join(bin_dir, "pg_restore"), "--exit-on-error", "--no-owner", f"--dbname={dbname}"]
    jobs = restore_jobs(backup, jobs)
    if jobs and fmt in ("custom", "directory"):
        argv.append(f"--jobs={jobs}")
    argv.append(source)
    return argv


def restore_dump(
    backup: Backup,
    tool: ToolConfig,
    target_dsn: str,
    jobs: int | None = None,
    on_tick: Callable[[], str | None] | None = None,
) -> RunResult:
    """`pggit-supervisor restore --target-dsn`: the dump as the tool's user into the target."""
    source = confine(backup, tool)
    bin_dir = os.path.dirname(tool.path or "/usr/bin/pg_dump")
    env = libpq_env(target_dsn)
    dbname = env.pop("PGDATABASE", None) or "postgres"
    scratch = tempfile.mkdtemp(prefix="pggit-restore-")
    try:
        give_to(scratch, tool.run_as)
        if dump_format(backup) == "plain":
            source = plain_script(source, scratch, tool.run_as)
        argv = dump_restore_argv(backup, bin_dir, source, dbname, jobs)
        return run_tool(
            RunSpec(
                argv=tuple(argv),
                env=env,
                timeout=RESTORE_TIMEOUT,
                run_as=tool.run_as,
                kill_grace=float(tool.kill_grace),
            ),
            on_tick=on_tick,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def copy_basebackup_steps(backup: Backup, source: str, target_dir: str) -> list[list[str]]:
    """argv lists that lay a pg_basebackup backup (at its confined path `source`) out as a
    data directory in target_dir."""
    if not os.path.isabs(source) or not os.path.isabs(target_dir):
        raise RestoreError(f"backup {backup.backup_id}: paths must be absolute ({source!r}, {target_dir!r})")
    fmt = backup.metadata.get("format", "plain")
    if fmt not in ("plain", "tar"):
        raise RestoreError(f"backup {backup.backup_id}: metadata.format {str(fmt)[:40]!r} is not one of plain, tar")
    if fmt == "plain":
        return [["/bin/cp", "-a", "--", source + "/.", target_dir]]
    base, wal = tar_members(source)
    if base is None:
        raise RestoreError(f"backup {backup.backup_id}: no base.tar* in {source}")
    steps = [extract_argv(os.path.join(source, base), target_dir)]
    if wal:
        steps.append(["/bin/mkdir", "-p", os.path.join(target_dir, "pg_wal")])
        steps.append(extract_argv(os.path.join(source, wal), os.path.join(target_dir, "pg_wal")))
    return steps


def restore_basebackup(
    backup: Backup, tool: ToolConfig, target_dir: str, on_tick: Callable[[], str | None] | None = None
) -> RunResult:
    """Copies the backup into target_dir (created, mode 0700, owned by the tool's user)."""
    source = confine(backup, tool)
    target_dir = os.path.abspath(target_dir)
    steps = copy_basebackup_steps(backup, source, target_dir)
    os.makedirs(target_dir, mode=0o700, exist_ok=True)
    os.chmod(target_dir, 0o700)
    give_to(target_dir, tool.run_as)
    result = None
    for argv in steps:
        result = run_tool(
            RunSpec(
                argv=tuple(argv), env={}, timeout=RESTORE_TIMEOUT, run_as=tool.run_as, kill_grace=float(tool.kill_grace)
            ),
            on_tick=on_tick,
        )
        if not result.ok:
            break
    assert result is not None  # copy_basebackup_steps gives at least one step
    return result


def describe(argv: list[str]) -> str:
    return shlex.join(argv)


__all__ = [
    "Backup",
    "RestoreError",
    "TRUST_FLAG",
    "check_empty_database",
    "check_empty_dir",
    "check_target_login",
    "confine",
    "copy_basebackup_steps",
    "describe",
    "dump_format",
    "dump_restore_argv",
    "load_backup",
    "plain_script",
    "powerful_rights",
    "prepare_target_database",
    "restore_basebackup",
    "restore_dump",
    "TAR",
]
