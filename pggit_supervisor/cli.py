"""Command line: `pggit-supervisor` and the guide's `pggit-backup-listener DSN`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone

import psycopg2

from . import __version__, log, restore, schema
from .config import (
    ENV_OVERRIDES,
    Config,
    ConfigError,
    config_summary,
    listener_config,
    load_config,
    resolve_config_path,
)
from .config.model import redacted_dsn
from .errors import JobError, PggitError, one_line
from .expiry import apply_retention
from .queue import Queue, connect
from .retention import plan_arguments, render_last_job, render_pending, render_plan
from .rows import one_row
from .schedule_report import render
from .status_check import UNKNOWN
from .status_report import collect, render_json, render_table, verdict
from .supervisor import Supervisor
from .systemd import Notifier
from .tools.restoring import RestoreTarget

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
    if not args.offline:
        for database in config.served():  # each listed database is checked, and named
            named = "" if database.single else f"database {database.name!r}: "
            for warning in queue_login_warnings(database.dsn):
                print(f"{path}: warning: {named}{warning}", file=sys.stderr)
    return 0


def queue_login_warnings(dsn: str) -> list[str]:
    """What check-config says about the queue login's rights (it connects for that, briefly;
    an unreachable database is a note, not a failure: the file itself is valid)."""

    try:
        conn = psycopg2.connect(dsn, connect_timeout=5, application_name="pggit-supervisor check-config")
    except psycopg2.Error as exc:
        return [
            f"could not connect to check the queue login's rights ({one_line(exc)[:200]}); "
            "add --offline to skip this check"
        ]
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT session_user, rolsuper FROM pg_roles WHERE rolname = session_user")
            user, superuser = one_row(cur)
    finally:
        conn.close()
    if not superuser:
        return []
    return [
        f"dsn: the queue login {user!r} is a superuser; the service needs only pggit_backup_worker "
        "(plus pg_read_all_data for pg_dump, REPLICATION for pg_basebackup): see README, Roles"
    ]


def _run(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config, os.environ)
    return serve(lambda: load_config(path))


def _restore(args: argparse.Namespace) -> int:
    """Restores one backup through its tool's adapter: pg_dump into an empty database,
    pg_basebackup into an empty directory; for pgBackRest and Barman prints (with --execute
    runs) the tool's own restore."""
    path = resolve_config_path(args.config, os.environ)
    config = load_with_dsn(path, args.dsn) if os.path.exists(path) or args.config else None
    if config is not None and len(config.served()) > 1:
        names = ", ".join(database.name for database in config.served())
        print(f"pggit-supervisor: the config serves several databases ({names}): give --dsn", file=sys.stderr)
        return EXIT_CONFIG
    dsn = args.dsn or (config.dsn if config else None)
    if not dsn:
        print(f"pggit-supervisor: no queue database: give --dsn or a config ({path} does not exist)", file=sys.stderr)
        return EXIT_CONFIG
    target = RestoreTarget(dsn=args.target_dsn, directory=args.target_dir, jobs=args.jobs)
    request = restore.Request(args.backup_id, target, args.trust_backup_contents, args.execute)
    try:
        restored = restore.restore(dsn, config, request)
    except JobError as exc:
        print(f"pggit-supervisor: restore refused: {exc}", file=sys.stderr)
        return 1
    result = restored.result
    if result is None:
        return 0  # shown, not run
    if not result.ok:
        print(f"pggit-supervisor: restore failed: {result.summary()}\n{result.stderr.text()}", file=sys.stderr)
        return 1
    if restored.plan.note:
        print(restored.plan.note)
    where = "the target database" if args.target_dsn else args.target_dir
    print(f"restored backup {restored.backup.backup_id} ({restored.backup.tool}) into {where}: {result.summary()}")
    return 0


def load_with_dsn(path: str, dsn: str | None, *, check_paths: bool = True) -> Config:
    """The config, with --dsn naming the queue database: with `dsn:` it replaces it, as ever;
    with `databases:` it picks the listed database of that DSN (its tools and schedules)."""
    config = load_config(path, check_paths=check_paths) if dsn else None
    if config is None or not config.databases:
        return load_config(path, dsn=dsn, check_paths=check_paths)
    for database in config.databases:
        if database.dsn == dsn:
            return config.for_database(database)
    names = ", ".join(database.name for database in config.databases)
    raise ConfigError([f"command line: dsn: is not the dsn of a listed database (allowed: the dsn of {names})"])


def _each_database(
    config: Config,
    command: str,
    work: Callable[[Queue, Config], bool],
    wanted: Callable[[Config], bool] = lambda _part: True,
) -> int:
    """Runs `work` on each served database's queue with that database's part of the config
    (those whose part is `wanted`), under a header naming the database when there are several;
    1 when a database could not be reached or `work` said something failed (the others are
    still served), else 0."""
    code = 0
    for index, database in enumerate(config.served()):
        part = config.for_database(database)
        if not wanted(part):
            continue
        if not database.single:
            print(("\n" if index else "") + f"database {database.name} ({redacted_dsn(database.dsn)}):")
        try:
            conn = connect(database.dsn, f"pggit-supervisor {command}")
        except psycopg2.Error as exc:
            print(f"pggit-supervisor: database {database.name}: {one_line(exc)}", file=sys.stderr)
            code = 1
            continue
        try:
            if not work(Queue(conn), part):
                code = 1
        finally:
            conn.close()
    return code


def _schedules(args: argparse.Namespace) -> int:
    """Each schedule with its latest slot, that slot's outcome and the next fire time (issue 10):
    one table per database, its own schedules."""

    def show(queue: Queue, part: Config) -> bool:
        print(render(part.schedules, queue.schedule_status(), datetime.now(timezone.utc)))
        return True

    config = load_with_dsn(resolve_config_path(args.config, os.environ), args.dsn, check_paths=False)
    return _each_database(config, "schedules", show)


def _retention(args: argparse.Namespace) -> int:
    """Per target: with --dry-run what would be kept (by which rule), what would go and which
    expired backups still wait for their removal (with the last error); by default a retention
    job per target is queued, for the workers (issue 10: one host applies a target at a time);
    with --now both expiry steps run here (expiry.py) and the old finished jobs are pruned, exit 1
    when a removal failed (it is retried on the next run). Each database decides over its own
    rows; one without retention targets is left out."""

    config = load_with_dsn(resolve_config_path(args.config, os.environ), args.dsn, check_paths=False)
    if not config.retention:
        print("pggit-supervisor: the config has no retention entries", file=sys.stderr)
        return EXIT_CONFIG
    mode = "dry-run" if args.dry_run else ("now" if args.now else "queue")
    return _each_database(
        config,
        "retention",
        lambda queue, part: _retention_of(queue, part, mode),
        wanted=lambda part: bool(part.retention),
    )


def _retention_of(queue: Queue, config: Config, mode: str) -> bool:
    """One database's targets (see _retention); False when a removal failed."""
    ok = True
    for retention in config.retention:
        target, rules = plan_arguments(retention)
        if mode == "dry-run":
            print(render_plan(retention, queue.retention_plan(target, rules)))
            if pending := queue.pending_removals(target, rules):
                print(render_pending(pending))
            print(render_last_job(queue.last_retention_job(target)))
        elif mode == "queue":
            job_id = queue.enqueue_retention(target)
            print(f"target {retention.name()}: retention job {job_id or '(one is running now)'} queued for the workers")
        else:
            done = apply_retention(queue, config, retention)
            ok = ok and not any(each.error for each in done.removals)
            print(done.render())
    if mode == "now":
        pruned = queue.prune_jobs(config.prune_jobs_after)
        if pruned is None:
            print("pruning skipped: another host is pruning now")
        else:
            print(f"pruned {pruned} job(s) that ended more than {config.prune_jobs_after} s ago (their backups stay)")
    return ok


def _status(args: argparse.Namespace) -> int:
    """Each served database's queue, workers, targets, schedules and unacknowledged failures
    (issue 11): a table, --json, or with --check a Nagios/Icinga probe (exit 0 OK, 1 WARNING,
    2 CRITICAL, 3 UNKNOWN, one line with performance data). A probe that cannot read its
    config is UNKNOWN (3), never the config error's 2, which a monitor would read as CRITICAL."""
    try:
        config = load_with_dsn(resolve_config_path(args.config, os.environ), args.dsn, check_paths=False)
    except ConfigError as exc:
        if not args.check:
            raise
        print(f"PGGIT UNKNOWN - the config cannot be read: {' / '.join(exc.problems)}")
        return UNKNOWN
    now = datetime.now(timezone.utc)
    if not args.check:
        reports = collect(config, now)
        print(render_json(reports, config, now) if args.json else render_table(reports, config))
        return 1 if any(report.error for report in reports) else 0
    try:
        reports = collect(config, now)
        checked = verdict(reports, config)
        print(render_json(reports, config, now) if args.json else checked.line())
    except Exception as exc:  # a probe never dies with 1 (WARNING) or a traceback: it does not know
        print(f"PGGIT UNKNOWN - the status could not be read: {one_line(exc)}")
        return UNKNOWN
    return checked.code


def serve(load: Callable[[], Config]) -> int:
    """Loads the config (refusing to start on an invalid one) and runs the supervisor;
    `load` is called again on SIGHUP."""

    try:
        config = load()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print("pggit-supervisor: not started: the configuration is invalid", file=sys.stderr)
        return EXIT_CONFIG
    log.setup(config.log_level, config.log_destination)
    return Supervisor(config, load, Notifier()).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pggit-supervisor",
        description="Backup automation for pgGit: runs the backups scheduled from SQL "
        "(pggit.backup_pg_dump(...), backup_pgbackrest(...), ...) with a pool of workers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the supervisor and its workers (systemd's ExecStart)")
    run.add_argument("-c", "--config", help="YAML config (default: $PGGIT_CONFIG or /etc/pggit/supervisor.yaml)")
    run.set_defaults(func=_run)
    check = commands.add_parser("check-config", help="validate a config file; list every problem, exit 2 if any")
    check.add_argument("-c", "--config", help="YAML config (default: $PGGIT_CONFIG or /etc/pggit/supervisor.yaml)")
    check.add_argument(
        "--offline",
        action="store_true",
        help="do not connect to the queue database (which checks that its login is not a superuser)",
    )
    check.set_defaults(func=_check_config)

    restore = commands.add_parser("restore", help="restore a backup into an empty database or directory")
    restore.add_argument("backup_id", help="pggit.backups.backup_id")
    restore.add_argument("--target-dsn", help="an existing, empty database (pg_dump backups)")
    restore.add_argument("--target-dir", help="a new or empty directory (pg_basebackup, pgBackRest, Barman)")
    restore.add_argument("--jobs", type=int, help="parallel pg_restore jobs (custom and directory dumps)")
    restore.add_argument(
        "--trust-backup-contents",
        action="store_true",
        help="allow --target-dsn to name a superuser or CREATEROLE login: the dump's functions "
        "run with its rights, so only when you trust everyone who could write into the "
        "backed-up database",
    )
    restore.add_argument(
        "--execute", action="store_true", help="run pgBackRest's / Barman's restore, not only print it"
    )
    restore.add_argument("--dsn", help="the queue database (default: the config's dsn)")
    restore.add_argument("-c", "--config", help="YAML config for tool paths and run_as users")
    restore.set_defaults(func=_restore)

    schedules = commands.add_parser(
        "schedules", help="list each schedule: its last slot, that slot's outcome, the next fire time"
    )
    schedules.add_argument("-c", "--config", help="YAML config (default: $PGGIT_CONFIG or /etc/pggit/supervisor.yaml)")
    schedules.add_argument("--dsn", help="the queue database (default: the config's dsn)")
    schedules.set_defaults(func=_schedules)

    retention = commands.add_parser(
        "retention",
        help="queue a retention job per target for the workers (--dry-run: only show; --now: apply here)",
    )
    how = retention.add_mutually_exclusive_group()
    how.add_argument(
        "--dry-run", action="store_true", help="print, per target, what is kept and why, and what would go"
    )
    how.add_argument(
        "--now", action="store_true", help="expire and remove here and now, not through the workers' queue"
    )
    retention.add_argument("-c", "--config", help="YAML config (default: $PGGIT_CONFIG or /etc/pggit/supervisor.yaml)")
    retention.add_argument("--dsn", help="the queue database (default: the config's dsn)")
    retention.set_defaults(func=_retention)

    status_parser = commands.add_parser(
        "status", help="queue, workers, targets, schedules and unacknowledged failures (--check: a monitoring probe)"
    )
    status_parser.add_argument(
        "-c", "--config", help="YAML config (default: $PGGIT_CONFIG or /etc/pggit/supervisor.yaml)"
    )
    status_parser.add_argument("--dsn", help="the queue database (default: the config's dsn)")
    status_parser.add_argument(
        "--json", action="store_true", help="print the documented JSON document (README, status)"
    )
    status_parser.add_argument(
        "--check",
        action="store_true",
        help="Nagios/Icinga plugin: one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
    )
    status_parser.set_defaults(func=_status)

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
    except ConfigError as exc:  # every problem of the file, one line each
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except PggitError as exc:  # our own errors say what to fix: one line, no traceback
        print(f"pggit-supervisor: {exc}", file=sys.stderr)
        return 1
    except psycopg2.Error as exc:  # the database refused or could not be reached
        print(f"pggit-supervisor: database error: {str(exc).strip()}", file=sys.stderr)
        return 1


def listener_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pggit-backup-listener",
        description="The guide's backup listener: the supervisor configured from the environment "
        f"({', '.join(ENV_OVERRIDES)}, PGGIT_CONFIG for a YAML file) and the DSN argument.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("dsn", help="the queue database, e.g. postgresql://postgres@localhost:5432/mydb")
    args = parser.parse_args(argv)
    return serve(lambda: listener_config(args.dsn, os.environ))
