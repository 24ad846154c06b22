"""Schedules in the config: check-config names the schedule and the key of every problem, and a
schedule's args pass check-config exactly when the backup function they call accepts them (the
SQL's own verdict, through the slot function a worker calls)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from helpers.config_files import problems_in, write_config
from helpers.db import query
from pggit_supervisor.config import ConfigError, load_config
from pggit_supervisor.schedule_args import ARGS

DSN = "postgresql://pggit_backup@localhost:5432/mydb"
NIGHTLY = {"name": "nightly", "cron": "0 2 * * *", "tool": "pgbackrest", "args": {"stanza": "main"}}


def config_with(tmp_path: Path, *schedules: dict[str, Any], **top: Any) -> str:
    data = {"dsn": DSN, "worker_id": "w1", "tools": {"pg_dump": {}}, "schedules": list(schedules), **top}
    return write_config(tmp_path, data)


def problems(tmp_path: Path, *schedules: dict[str, Any]) -> list[str]:
    return problems_in(config_with(tmp_path, *schedules))


def test_a_valid_schedule_loads_with_its_defaults_and_durations_in_seconds(tmp_path):
    config = load_config(
        config_with(tmp_path, NIGHTLY, {**NIGHTLY, "name": "hourly", "cron": "@hourly", "max_age": "2h"}),
        {},
        check_paths=False,
    )
    nightly, hourly = config.schedules
    assert (nightly.timezone, nightly.catch_up, nightly.overlap, nightly.enabled) == ("UTC", "latest", "skip", True)
    assert (nightly.starting_deadline, nightly.max_age, hourly.max_age) == (6 * 3600, None, 7200)
    assert config.schedule_interval == 30.0
    assert hash(config) == hash(
        load_config(
            config_with(tmp_path, NIGHTLY, {**NIGHTLY, "name": "hourly", "cron": "@hourly", "max_age": "2h"}),
            {},
            check_paths=False,
        )
    )


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"cron": "0 2 * *"}, "schedules[0].cron: '0 2 * *' must have 5 fields"),
        ({"cron": "0 25 * * *"}, "schedules[0].cron: '0 25 * * *' is not a valid cron expression"),
        ({"timezone": "Mars/Olympus"}, "schedules[0].timezone: must be a time zone, got 'Mars/Olympus'"),
        ({"tool": "custom"}, "schedules[0].tool: must be a built-in backup tool, got 'custom'"),
        ({"catch_up": "some"}, "schedules[0].catch_up: must be skip, latest or all, got 'some'"),
        ({"overlap": "kill"}, "schedules[0].overlap: must be skip or queue, got 'kill'"),
        ({"starting_deadline": "6 hours"}, "schedules[0].starting_deadline: must be a duration, got '6 hours'"),
        ({"starting_deadline": "10s"}, "schedules[0].starting_deadline: must be a duration, got '10s'"),
        ({"colour": "red"}, "schedules[0].colour: unknown key"),
        (
            {"args": {"backup_type": "weekly"}},
            "schedules[0].args.backup_type: schedule 'nightly': 'weekly' is not allowed (allowed: full, incr, diff)",
        ),
        ({"args": {"stanza": "a b"}}, "schedules[0].args.stanza: schedule 'nightly': 'a b' is not allowed"),
        (
            {"args": {"server_name": "x"}},
            "schedules[0].args.server_name: schedule 'nightly': is not a parameter of pggit.backup_pgbackrest",
        ),
        (
            {"args": {"options": {"repo": 0}}},
            "schedules[0].args.options.repo: schedule 'nightly': 0 is not allowed (allowed: an integer from 1 to 256)",
        ),
        (
            {"args": {"options": {"priority": 101}}},
            "schedules[0].args.options.priority: schedule 'nightly': 101 is not allowed (allowed: an integer from 0 to",
        ),
        (
            {"args": {"options": {"start-fast": True}}},
            "schedules[0].args.options.start-fast: schedule 'nightly': unknown option",
        ),
        (
            {"database": "other"},
            "schedules[0].database: schedule 'nightly': 'other' is not the database of dsn (allowed: mydb)",
        ),
    ],
)
def test_a_bad_schedule_is_a_config_error_naming_the_schedule_and_the_key(tmp_path, change, expected):
    found = problems(tmp_path, {**NIGHTLY, **change})
    assert len(found) == 1 and found[0].startswith(expected), found


def test_every_schedule_problem_is_listed_at_once_and_names_must_be_unique(tmp_path):
    found = problems(
        tmp_path, {**NIGHTLY, "cron": "bad"}, {**NIGHTLY, "name": "b", "tool": "barman", "args": {}}, NIGHTLY
    )
    assert [problem.split(":")[0] for problem in found] == [
        "schedules[0].cron",
        "schedules[1].args.server_name",
        "schedules[2].name",
    ]
    assert "duplicate schedule name 'nightly'" in found[2]


def test_an_output_path_outside_the_tools_allowed_dirs_is_refused(tmp_path):
    dump = {"name": "dump", "cron": "@daily", "tool": "pg_dump", "args": {"output_path": "/srv/elsewhere"}}
    found = problems(tmp_path, dump)
    assert found == [
        "schedules[0].args.output_path: schedule 'dump': '/srv/elsewhere' is not below "
        "tools.pg_dump.allowed_output_dirs (allowed: /backups)"
    ]


# --- the config's verdict is the SQL's --------------------------------------------------------

CASES = [
    ("pgbackrest", {}),
    ("pgbackrest", {"backup_type": "incr", "stanza": "s-1"}),
    ("pgbackrest", {"backup_type": "weekly"}),
    ("pgbackrest", {"stanza": "no/slash"}),
    ("pgbackrest", {"options": {"repo": 2}}),
    ("pgbackrest", {"options": {"repo": 300}}),
    ("pgbackrest", {"options": {"type": "diff"}}),
    ("pgbackrest", {"options": {"bogus": 1}}),
    ("pgbackrest", {"schema": "public"}),
    ("barman", {"server_name": "pg-main"}),
    ("barman", {"server_name": "all"}),
    ("barman", {}),
    ("barman", {"server_name": "pg", "options": {"reuse-backup": "incremental"}}),
    ("barman", {"server_name": "pg", "options": {"reuse-backup": "hardlink"}}),
    ("barman", {"server_name": "pg", "options": {"wait": "yes"}}),
    ("pg_dump", {"format": "directory", "options": {"jobs": 4}}),
    ("pg_dump", {"format": "tar", "options": {"jobs": 4}}),
    ("pg_dump", {"format": "tar", "options": {"compression_level": 3}}),
    ("pg_dump", {"format": "zip"}),
    ("pg_dump", {"schema": "bad-name"}),
    ("pg_dump", {"output_path": "relative/dir"}),
    ("pg_dump", {"options": {"compression_level": 10}}),
    ("pg_dump", {"options": {"priority": -1}}),
    ("pg_basebackup", {"options": {"format": "tar", "compression": "gzip", "compression_level": 9}}),
    ("pg_basebackup", {"options": {"format": "tar", "compression": "gzip", "compression_level": 10}}),
    ("pg_basebackup", {"options": {"compression": "lz4"}}),
    ("pg_basebackup", {"options": {"checkpoint": "slow"}}),
    ("pg_basebackup", {"options": {"compression_level": 3}}),
    ("pg_basebackup", {"stanza": "x"}),
    ("pg_dump", {"options": {"webhook_url": "https://hooks.example.com/T0/B1?x=1"}}),
    ("pg_dump", {"options": {"webhook_url": "https://hooks.example.com/a b"}}),
    ("pg_dump", {"options": {"webhook_url": "ftp://hooks.example.com/"}}),
    ("pg_dump", {"options": {"notify_on_success": "yes"}}),
]


def sql_accepts(db, tool: str, args: dict[str, Any], index: int) -> tuple[bool, str | None]:
    definition = {"cron": "@daily", "timezone": "UTC", "tool": tool, "args": args}
    name = f"case-{index}"
    query(db, "SELECT * FROM pggit.touch_backup_schedule('h/1', %s, %s)", (name, json.dumps(definition)))
    slot = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = query(
        db,
        "SELECT outcome, detail FROM pggit.record_backup_schedule_slot('h/1', %s, %s, %s, 'enqueue')",
        (name, slot, json.dumps(definition)),
    )[0]
    return row["outcome"] == "enqueued", row["detail"]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{tool}-{json.dumps(args)}" for tool, args in CASES])
def test_check_config_accepts_a_schedules_args_exactly_when_the_backup_function_does(db, tmp_path, index):
    tool, args = CASES[index]
    schedule = {"name": "s", "cron": "@daily", "tool": tool, "args": args}
    try:
        load_config(config_with(tmp_path, schedule), {}, check_paths=False)
        config_ok, config_said = True, ""
    except ConfigError as refused:
        config_ok, config_said = False, str(refused)
    sql_ok, sql_said = sql_accepts(db, tool, args, index)
    assert config_ok == sql_ok, f"config: {config_said or 'accepted'}; SQL: {sql_said or 'accepted'}"


def test_the_args_each_function_takes_are_the_same_in_python_and_sql(db):
    source = query(db, "SELECT prosrc FROM pg_proc WHERE proname = '_enqueue_scheduled'")[0]["prosrc"]
    for tool, keys in ARGS.items():
        listed = "'" + "', '".join(keys) + "'"
        assert f"'{tool}', ARRAY[{listed}]" in source, tool


def test_the_config_names_stanzas_by_the_tools_own_rule():
    from pggit_supervisor.config.settings import SCHEDULE_NAME
    from pggit_supervisor.tools import NAME_PATTERN

    assert SCHEDULE_NAME.pattern == NAME_PATTERN.pattern
