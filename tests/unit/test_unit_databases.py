"""Several databases, one supervisor (issue 10): the `databases:` list, what each database's
workers run with, the supervisor's pool per database, and the problems naming their database."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from helpers.clock import FakeClock
from helpers.config_files import problems_in, write_config
from pggit_supervisor import log as logs
from pggit_supervisor.config import Config, Database, load_config
from pggit_supervisor.supervisor import Supervisor
from pggit_supervisor.systemd import Notifier

APP = "postgresql://pggit_backup@db1:5432/app"
BILLING = "postgresql://pggit_backup@db1:5432/billing"
MINUTELY = {"cron": "* * * * *", "tool": "pg_dump"}


def fleet(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "worker_id": "host1",
        "workers": 3,
        "tools": {"pg_dump": {}, "pgbackrest": {}},
        "databases": [
            {"name": "app", "dsn": APP, "workers": 2, "tools": ["pgbackrest"]},
            {"name": "billing", "dsn": BILLING},
        ],
        "schedules": [
            {**MINUTELY, "name": "app-dump", "database": "app"},
            {**MINUTELY, "name": "billing-dump", "database": "billing"},
        ],
    }
    data.update(changes)
    return data


def problems_of(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    return problems_in(write_config(tmp_path, data))


def test_a_fleet_config_lists_its_databases_each_with_its_workers_tools_and_schedules(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, fleet()), {}, check_paths=False)

    assert config.databases == (
        Database("app", APP, 2, ("pgbackrest",)),
        Database("billing", BILLING, 3, ()),  # the top-level workers
    )
    assert config.dsn == APP and config.total_workers == 5
    app, billing = (config.for_database(database) for database in config.served())
    assert (app.dsn, app.workers, list(app.tools), [s.name for s in app.schedules]) == (
        APP,
        2,
        ["pgbackrest"],
        ["app-dump"],
    )
    assert (billing.dsn, billing.workers, list(billing.tools), [s.name for s in billing.schedules]) == (
        BILLING,
        3,
        ["pg_dump", "pgbackrest"],
        ["billing-dump"],
    )
    assert pickle.loads(pickle.dumps(app)) == app and hash(app) == hash(pickle.loads(pickle.dumps(app)))


def test_each_database_gets_the_retention_targets_naming_it_and_those_naming_none(tmp_path: Path) -> None:
    retention = [
        {"target": {"tool": "pg_dump", "database": "app"}, "keep_last": 3},
        {"target": {"tool": "pg_basebackup", "database": "billing"}, "keep_last": 3},
        {"target": {"tool": "pgbackrest", "stanza": "main"}, "database": "billing", "keep_last": 3},
        {"target": {"tool": "pg_dump", "schema": "audit"}, "keep_last": 3},
    ]
    config = load_config(write_config(tmp_path, fleet(retention=retention)), {}, check_paths=False)

    app, billing = (config.for_database(database) for database in config.served())
    assert [r.name() for r in app.retention] == ["pg_dump database=app", "pg_dump schema=audit"]
    assert [r.name() for r in billing.retention] == [
        "pg_basebackup database=billing",
        "pgbackrest stanza=main",
        "pg_dump schema=audit",
    ]


def test_a_stanza_or_server_is_retained_by_one_named_database_and_backed_up_into_it_alone(tmp_path: Path) -> None:
    """Each queue counts only its own rows: two databases deciding over one pgBackRest stanza
    could expire a full the other's incrementals depend on (`expire --set` takes them too)."""
    unnamed = [{"target": {"tool": "pgbackrest", "stanza": "main"}, "keep_last": 3}]
    assert problems_of(tmp_path, fleet(retention=unnamed)) == [
        "retention[0].database: required for a stanza: 2 databases are served and one queue must decide over "
        "pgbackrest stanza 'main' (allowed: app, billing)"
    ]
    twice = [
        {"target": {"tool": "barman", "server": "pg"}, "database": "app"},
        {"target": {"tool": "barman", "server": "pg"}, "database": "billing"},
    ]
    assert problems_of(tmp_path, fleet(retention=twice)) == [
        "retention[1].target: barman server 'pg' is retained already by retention[0] (database 'app') "
        "(allowed: each stanza or server once)"
    ]
    elsewhere = fleet(
        retention=[{"target": {"tool": "pgbackrest", "stanza": "main"}, "database": "app"}],
        schedules=[{"name": "full", "cron": "@daily", "tool": "pgbackrest", "database": "billing"}],
    )
    assert problems_of(tmp_path, elsewhere) == [
        "schedules[0].database: schedule 'full': pgbackrest stanza 'main' is retained in database 'app' "
        "(retention[0]); its backups recorded in 'billing' would not be counted there (allowed: app)"
    ]
    unknown = [{"target": {"tool": "pgbackrest", "stanza": "main"}, "database": "nope"}]
    assert problems_of(tmp_path, fleet(retention=unknown)) == [
        "retention[0].database: 'nope' is not a served database (allowed: app, billing)"
    ]
    same = [{"target": {"tool": "pg_dump", "database": "app"}}, {"target": {"tool": "pg_dump"}, "database": "app"}]
    assert problems_of(tmp_path, fleet(retention=same)) == [
        "retention[1].target: the same target as retention[0] (allowed: each target once)"
    ]


def test_the_single_dsn_form_serves_one_database_exactly_as_before(tmp_path: Path) -> None:
    data = {"dsn": APP, "worker_id": "host1", "workers": 2, "tools": {"pg_dump": {}}}
    data["schedules"] = [{**MINUTELY, "name": "plain"}, {**MINUTELY, "name": "named", "database": "app"}]
    config = load_config(write_config(tmp_path, data), {}, check_paths=False)

    assert config.databases == ()
    assert config.served() == (Database("app", APP, 2, (), single=True),)
    assert config.for_database(config.served()[0]) == Config(**{**config.__dict__, "databases": config.served()})


def test_dsn_and_databases_together_or_neither_are_refused(tmp_path: Path) -> None:
    assert problems_of(tmp_path, fleet(dsn=APP)) == [
        "dsn: must not be set together with databases (allowed: dsn for one database, or databases for several)"
    ]
    data = fleet()
    del data["databases"], data["schedules"]
    assert problems_of(tmp_path, data) == [
        "dsn: required (allowed: a postgresql:// URI or a libpq key=value string, or databases: a list of databases)"
    ]


def test_every_problem_of_a_listed_database_names_it(tmp_path: Path) -> None:
    data = fleet(
        databases=[
            {"name": "app", "dsn": APP, "workers": 0},
            {"name": "billing", "dsn": "dbname='"},
            {"name": "app", "dsn": APP.replace("app", "app2"), "colour": "red"},
            {"name": "crm", "dsn": BILLING, "tools": ["barman"]},
            {"name": "copy", "dsn": BILLING + "?application_name=x"},
        ]
    )
    del data["schedules"]

    assert problems_of(tmp_path, data) == [
        "databases[0].workers: database 'app': must be between 1 and 64, got 0 (allowed: 1-64)",
        "databases[1].dsn: database 'billing': is not a valid libpq connection string "
        "(allowed: a postgresql:// URI or a libpq key=value string)",
        "databases[2].colour: database 'app': unknown key (allowed: dsn, name, tools, workers)",
        "databases[3].tools[0]: database 'crm': 'barman' is not configured under tools (allowed: pg_dump, pgbackrest)",
        "databases[2].name: duplicate database name 'app' (allowed: each name once)",
        "databases[4].dsn: database 'copy': the same database as 'crm' "
        "(allowed: each database once (its workers would be counted twice))",
    ]


def test_a_name_that_would_overflow_the_worker_id_is_refused(tmp_path: Path) -> None:
    data = fleet(databases=[{"name": "x" * 49, "dsn": APP}])
    del data["schedules"]
    (problem,) = problems_of(tmp_path, data)
    assert problem.startswith(f"databases[0].name: database '{'x' * 49}': must be 1-48 letters")


def test_schedules_and_retention_name_a_listed_database(tmp_path: Path) -> None:
    data = fleet(
        schedules=[{**MINUTELY, "name": "anywhere"}, {**MINUTELY, "name": "nowhere", "database": "crm"}],
        retention=[
            {"target": {"tool": "pg_dump", "database": "crm"}, "keep_last": 3},
            {"target": {"tool": "pg_dump", "database": "billing"}, "keep_last": 3},
        ],
    )

    assert problems_of(tmp_path, data) == [
        "retention[0].target.database: 'crm' is not a listed database (allowed: app, billing)",
        "schedules[0].database: schedule 'anywhere': required, there are 2 databases (allowed: app, billing)",
        "schedules[1].database: schedule 'nowhere': 'crm' is not a listed database (allowed: app, billing)",
    ]


def test_the_supervisor_lays_out_a_pool_per_database(clock: FakeClock) -> None:
    config = Config(
        dsn=APP,
        workers=9,
        databases=(Database("app", APP, 2), Database("billing", BILLING, 1)),
    )
    supervisor = Supervisor(config, lambda: config, Notifier({}), clock=clock)
    try:
        layout = {slot: (database.name, number) for slot, (database, number) in supervisor.layout().items()}
        assert layout == {1: ("app", 1), 2: ("app", 2), 3: ("billing", 1)}
        assert supervisor.status_text().startswith("0/3 workers alive")
        single = Supervisor(Config(dsn=APP, workers=2), lambda: config, Notifier({}), clock=clock)
        assert [(d.name, n, d.single) for d, n in single.layout().values()] == [("app", 1, True), ("app", 2, True)]
        for pipe in (single.wake_r, single.wake_w):
            os.close(pipe)
    finally:
        os.close(supervisor.wake_r)
        os.close(supervisor.wake_w)


def test_a_workers_lines_end_with_its_database_unless_they_name_it(capsys: pytest.CaptureFixture[str]) -> None:
    root = logs.logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.setup("INFO")
    logs.set_context(database="billing")
    try:
        logs.logging.getLogger("pggit.test").info("job claimed job=1")
        logs.logging.getLogger("pggit.test").info("worker started worker=w/billing/1 database=billing")
    finally:
        logs.set_context()
        root.handlers[:], root.level = saved
    first, second = capsys.readouterr().err.splitlines()
    assert first.endswith("job claimed job=1 database=billing")
    assert second.endswith("worker started worker=w/billing/1 database=billing")
