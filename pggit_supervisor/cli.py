"""Command line: `pggit-supervisor` and the guide's `pggit-backup-listener DSN`."""

from __future__ import annotations

import argparse
import sys

from . import __version__, schema


def _schema_install(args: argparse.Namespace) -> int:
    applied = schema.install(args.dsn)
    installed, newest, _ = schema.status(args.dsn)
    print(f"schema version {installed} installed ({len(applied)} file(s) applied now, newest {newest})")
    return 0


def _schema_status(args: argparse.Namespace) -> int:
    installed, newest, pending = schema.status(args.dsn)
    print(f"installed version: {installed}")
    print(f"available version: {newest}")
    for migration in pending:
        print(f"pending: {migration.name}")
    return 0 if not pending else 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pggit-supervisor",
        description="Backup automation for pgGit: runs the backups scheduled from SQL "
                    "(pggit.backup_pg_dump(...), backup_pgbackrest(...), ...) with a pool of workers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    schema_parser = commands.add_parser("schema", help="install, upgrade or inspect the SQL schema")
    schema_commands = schema_parser.add_subparsers(dest="schema_command", metavar="ACTION")
    install = schema_commands.add_parser("install", help="apply the schema files not yet applied (idempotent)")
    install.add_argument("--dsn", required=True, help="libpq connection string or URI of the database")
    install.set_defaults(func=_schema_install)
    status = schema_commands.add_parser("status", help="print the installed schema version (exit 3 if behind)")
    status.add_argument("--dsn", required=True, help="libpq connection string or URI of the database")
    status.set_defaults(func=_schema_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except schema.SchemaError as exc:
        print(f"pggit-supervisor: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # psycopg2.OperationalError and friends: one line, no traceback
        if exc.__class__.__module__.startswith("psycopg2"):
            print(f"pggit-supervisor: database error: {str(exc).strip()}", file=sys.stderr)
            return 1
        raise


def listener_main(argv: list[str] | None = None) -> int:
    print("pggit-backup-listener: the supervisor arrives in step 2", file=sys.stderr)
    return 2
