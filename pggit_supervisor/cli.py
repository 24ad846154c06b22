"""Command line: `pggit-supervisor` and the guide's `pggit-backup-listener DSN`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from . import __version__, schema
from .config import Config, ConfigError, config_summary, listener_config, load_config, resolve_config_path

EXIT_CONFIG = 2


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


def _check_config(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config, os.environ)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: OK {config_summary(config)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config, os.environ)
    return serve(lambda: load_config(path))


def serve(load: Callable[[], Config]) -> int:
    """Loads the config (refusing to start on an invalid one) and runs the supervisor;
    `load` is called again on SIGHUP."""
    from . import log
    from .supervisor import Supervisor
    from .systemd import Notifier

    try:
        config = load()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print("pggit-supervisor: not started: the configuration is invalid", file=sys.stderr)
        return EXIT_CONFIG
    log.setup(config.log_level)
    return Supervisor(config, load, Notifier()).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pggit-supervisor",
        description="Backup automation for pgGit: runs the backups scheduled from SQL "
                    "(pggit.backup_pg_dump(...), backup_pgbackrest(...), ...) with a pool of workers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the supervisor and its workers (systemd's ExecStart)")
    run.add_argument("-c", "--config", help="YAML config (default: $PGGIT_CONFIG or /etc/pggit/supervisor.yaml)")
    run.set_defaults(func=_run)
    check = commands.add_parser("check-config", help="validate a config file; list every problem, exit 2 if any")
    check.add_argument("-c", "--config", help="YAML config (default: $PGGIT_CONFIG or /etc/pggit/supervisor.yaml)")
    check.set_defaults(func=_check_config)

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
    parser = argparse.ArgumentParser(
        prog="pggit-backup-listener",
        description="The guide's backup listener: the supervisor configured from the environment "
                    "(PGGIT_POLL_INTERVAL, PGGIT_WORKER_ID, PGGIT_LOG_LEVEL, PGGIT_WORKERS, "
                    "PGGIT_CONFIG for a YAML file) and the DSN argument.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("dsn", help="the queue database, e.g. postgresql://postgres@localhost:5432/mydb")
    args = parser.parse_args(argv)
    return serve(lambda: listener_config(args.dsn, os.environ))
