"""`pggit-supervisor restore`: brings one backup back, through its tool's adapter. This module
checks what the operator asked (the backup is completed, the target is empty, the target login
cannot be taken over by what the dump runs), asks the adapter for its restore plan (see
tools/restoring.py) and runs it; the drill (tools/restore_test.py) runs the same plans into its
sandbox. A restore never writes into a target that holds anything."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace

import psycopg2

from .config import Config, ToolConfig, default_tool
from .errors import invalid
from .files import give_to
from .rows import one_row
from .runner import RunResult, run_tool
from .tools import restorer_for
from .tools.restoring import Backup, RestorePlan, RestoreTarget, run_plan

# Roles whose rights a restored function could use to take more than the target database:
# superuser and CREATEROLE (make itself anything), and the roles that run programs or write
# files on the server as its OS user.
_POWERFUL_ROLES = ("pg_execute_server_program", "pg_write_server_files")
TRUST_FLAG = "--trust-backup-contents"


@dataclass(frozen=True)
class Request:
    """What the operator asked: one backup, its target, and whether to run a tool's own restore."""

    backup_id: str
    target: RestoreTarget
    trust_contents: bool = False
    execute: bool = False


@dataclass(frozen=True)
class Restored:
    """How a restore ended: `result` of its last step, or None when the plan was only shown."""

    backup: Backup
    plan: RestorePlan
    result: RunResult | None


def restore(dsn: str, config: Config | None, request: Request, say: Callable[[str], None] = print) -> Restored:
    """Loads the backup, checks the target, asks the backup's adapter for its plan and runs it
    (a plan that asks first is only shown unless request.execute). A refusal is a JobError."""
    backup = load_backup(dsn, request.backup_id)
    restorer = restorer_for(backup.tool)
    tool = tool_config(config, backup.tool)
    scratch = tempfile.mkdtemp(prefix="pggit-restore-")
    try:
        give_to(scratch, tool.run_as)
        # the plan first: it refuses a backup that cannot be restored (a location outside the
        # allowed directories, an unknown format) before anything looks at the target
        plan = restorer.restore_plan(backup, tool, replace(request.target, scratch=scratch))
        check_target(restorer.restores_into, request)
        if plan.ask_first:
            for step in plan.steps:
                say(shlex.join(step.argv))
            if not request.execute:
                say(f"(not run: add --execute to run it as {tool.run_as or 'the current user'})")
                return Restored(backup, plan, None)
        return Restored(backup, plan, run_plan(plan, run_tool))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_target(kind: str, request: Request) -> None:
    """An empty database the login cannot hand over to the dump's code, or an empty directory."""
    target = request.target
    if kind == "database" and target.dsn:
        check_target_login(target.dsn, request.trust_contents)
        check_empty_database(target.dsn)
    elif kind == "directory" and target.directory:
        check_empty_dir(target.directory)


def tool_config(config: Config | None, tool: str) -> ToolConfig:
    return (config.tools.get(tool) if config else None) or default_tool(tool)


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
        raise invalid(f"{backup_id!r} is not a backup id (a UUID)") from None
    finally:
        conn.close()
    if row is None:
        raise invalid(f"no backup with id {backup_id}")
    backup = Backup(*row)
    if backup.status != "completed":
        raise invalid(f"backup {backup_id} is {backup.status}: only a completed backup can be restored")
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
        raise invalid(
            f"target database {name} is not empty ({relations} relations, {schemas} schemas "
            "besides public): restore into a new database (createdb) instead"
        )


def check_empty_dir(path: str) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise invalid(f"target directory {path} is not empty: restore into a new or empty directory")


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
        raise invalid(
            "the target login has rights a restored function could take over: "
            + "; ".join(rights)
            + ". A dump carries functions written by any user who could create objects in the backed-up "
            "database, and pg_restore runs them as this login. Restore as a login without SUPERUSER or "
            f"CREATEROLE (the owner of the new database), or pass {TRUST_FLAG} if you trust everyone who "
            "could write into that database"
        )
