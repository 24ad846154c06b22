"""Behaviour of pggit_supervisor.config: what loads, what defaults, and how problems are reported."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import socket
from pathlib import Path
from typing import Any

import pytest

from helpers.config_files import write_config
from pggit_supervisor.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    ToolConfig,
    config_summary,
    default_tool,
    host,
    listener_config,
    load_config,
    resolve_config_path,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "supervisor.yaml"
DSN = "postgresql://pggit_backup@localhost:5432/mydb"
TOP_KEYS = (
    "databases, drill_user, dsn, heartbeat_interval, kill_grace, lease_seconds, log_level, notifications, "
    "poll_interval, prune_jobs_after, "
    "retention, retry, schedule_interval, schedules, shutdown_timeout, tools, worker_id, worker_timeout, workers"
)
TOOLS = "barman, custom, pg_basebackup, pg_dump, pgbackrest"
BASE: dict[str, Any] = {"dsn": DSN, "worker_id": "w1", "tools": {"pg_dump": {}}}


def problems_of(path: str, environ: dict[str, str] | None = None, **kwargs: Any) -> list[str]:
    kwargs.setdefault("check_paths", False)
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ or {}, **kwargs)
    return raised.value.problems


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` laid over `base`; dotted keys reach into nested mappings."""
    result = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        target = result
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    return result


def test_documented_example_loads_with_documented_values() -> None:
    config = load_config(str(EXAMPLE), {}, check_paths=False)

    assert config.dsn == DSN
    assert (config.worker_id, config.workers) == ("worker-01", 2)
    assert (config.poll_interval, config.heartbeat_interval) == (10, 10)
    assert (config.lease_seconds, config.shutdown_timeout, config.kill_grace) == (60, 300, 10)
    assert config.log_level == "INFO"
    assert (config.retry.base_delay, config.retry.max_delay) == (300, 21600)
    assert config.source == str(EXAMPLE)
    assert set(config.tools) == {"pg_dump", "pg_basebackup", "pgbackrest", "barman", "custom"}
    assert config.tools["pg_dump"] == ToolConfig(
        name="pg_dump",
        path="/usr/bin/pg_dump",
        run_as="postgres",
        timeout=21600,
        config=None,
        allowed_output_dirs=("/backups",),
        allowed_commands=(),
        kill_grace=10,
    )
    assert config.tools["pg_basebackup"].path == "/usr/bin/pg_basebackup"
    assert config.tools["pg_basebackup"].allowed_output_dirs == ("/backups",)
    assert config.tools["pgbackrest"] == ToolConfig(
        name="pgbackrest",
        path="/usr/bin/pgbackrest",
        run_as="postgres",
        timeout=86400,
        config="/etc/pgbackrest/pgbackrest.conf",
        allowed_output_dirs=(),
        allowed_commands=(),
        kill_grace=10,
    )
    assert config.tools["barman"].run_as == "barman"
    assert config.tools["barman"].config == "/etc/barman.conf"
    assert config.tools["custom"] == ToolConfig(
        name="custom",
        path=None,
        run_as=None,
        timeout=3600,
        config=None,
        allowed_output_dirs=(),
        allowed_commands=("/usr/local/bin/my-custom-backup-script.sh",),
        kill_grace=10,
    )


def test_documented_example_comments_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.endswith(":"):
            continue  # blank, comment, or a section whose comment sits above it
        assert "#" in line or lines[number - 2].strip().startswith("#"), f"{EXAMPLE}:{number} has no comment: {line}"


def test_drill_user_defaults_to_the_packages_user_and_refuses_root_or_a_bad_name(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, BASE), {}, check_paths=False).drill_user == "pggit-drill"
    assert load_config(str(EXAMPLE), {}, check_paths=False).drill_user == "pggit-drill"
    for bad in ("root", "Bad User", 7):
        with pytest.raises(ConfigError) as raised:
            load_config(write_config(tmp_path, {**BASE, "drill_user": bad}), {}, check_paths=False)
        assert "drill_user: must be the name of an unprivileged user" in str(raised.value)
        assert "default pggit-drill" in str(raised.value)


def test_omitted_keys_take_documented_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "db-host-7")
    path = write_config(tmp_path, {"dsn": DSN, "tools": {"pg_dump": None}})

    config = load_config(path, {}, check_paths=False)

    assert config.worker_id == "db-host-7"
    assert (config.workers, config.poll_interval, config.heartbeat_interval) == (1, 10, 10)
    assert (config.lease_seconds, config.shutdown_timeout, config.kill_grace) == (60, 300, 10)
    assert config.log_level == "INFO"
    assert (config.retry.base_delay, config.retry.max_delay) == (300, 21600)
    assert config.tools["pg_dump"] == default_tool("pg_dump")


def test_each_tool_gets_its_own_defaults_and_inherits_kill_grace(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "dsn": DSN,
            "kill_grace": 25,
            "tools": {
                "pg_dump": {},
                "pg_basebackup": {},
                "pgbackrest": {},
                "barman": {},
                "custom": {"allowed_commands": ["/opt/backup.sh"]},
            },
        },
    )

    tools = load_config(path, {}, check_paths=False).tools

    assert {name: (tool.path, tool.timeout) for name, tool in tools.items()} == {
        "pg_dump": ("/usr/bin/pg_dump", 21600),
        "pg_basebackup": ("/usr/bin/pg_basebackup", 21600),
        "pgbackrest": ("/usr/bin/pgbackrest", 86400),
        "barman": ("/usr/bin/barman", 86400),
        "custom": (None, 3600),
    }
    assert tools["pg_dump"].allowed_output_dirs == ("/backups",)
    assert tools["pgbackrest"].allowed_output_dirs == ()
    assert all(tool.run_as is None and tool.config is None for tool in tools.values())
    assert all(tool.kill_grace == 25 for tool in tools.values())


def test_tool_kill_grace_overrides_the_top_level_one(tmp_path: Path) -> None:
    path = write_config(tmp_path, merged(BASE, {"kill_grace": 5, "tools.pgbackrest": {"kill_grace": 40}}))

    tools = load_config(path, {}, check_paths=False).tools

    assert (tools["pg_dump"].kill_grace, tools["pgbackrest"].kill_grace) == (5, 40)


def test_values_are_normalised(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        merged(
            BASE,
            {
                "log_level": "debug",
                "poll_interval": 0.2,
                "heartbeat_interval": 0.5,
                "tools.pg_dump.allowed_output_dirs": ["/backups//daily/", "/srv/dumps/."],
            },
        ),
    )

    config = load_config(path, {}, check_paths=False)

    assert config.log_level == "DEBUG"
    assert (config.poll_interval, config.heartbeat_interval) == (0.2, 0.5)
    assert config.tools["pg_dump"].allowed_output_dirs == ("/backups/daily", "/srv/dumps")


BAD_VALUES = [
    (
        {"tools.pg_dump.timeout": "abc"},
        "tools.pg_dump.timeout: must be a positive integer, got 'abc' (allowed: 1-604800 seconds)",
    ),
    (
        {"tools.pg_dump.timeout": 604801},
        "tools.pg_dump.timeout: must be between 1 and 604800, got 604801 (allowed: 1-604800 seconds)",
    ),
    ({"workers": 0}, "workers: must be between 1 and 64, got 0 (allowed: 1-64)"),
    ({"workers": 65}, "workers: must be between 1 and 64, got 65 (allowed: 1-64)"),
    ({"workers": 2.5}, "workers: must be a positive integer, got 2.5 (allowed: 1-64)"),
    ({"workers": None}, "workers: must be a positive integer, got null (allowed: 1-64)"),
    ({"poll_interval": "fast"}, "poll_interval: must be a number > 0, got 'fast' (allowed: 0.1-3600)"),
    ({"poll_interval": 0}, "poll_interval: must be between 0.1 and 3600, got 0 (allowed: 0.1-3600)"),
    ({"heartbeat_interval": 3601}, "heartbeat_interval: must be between 0.1 and 3600, got 3601 (allowed: 0.1-3600)"),
    ({"lease_seconds": 4.5}, "lease_seconds: must be a positive integer, got 4.5 (allowed: 5-86400 seconds)"),
    ({"lease_seconds": 3}, "lease_seconds: must be between 5 and 86400, got 3 (allowed: 5-86400 seconds)"),
    ({"shutdown_timeout": -1}, "shutdown_timeout: must be between 0 and 86400, got -1 (allowed: 0-86400 seconds)"),
    (
        {"shutdown_timeout": "5m"},
        "shutdown_timeout: must be a non-negative integer, got '5m' (allowed: 0-86400 seconds)",
    ),
    ({"kill_grace": 601}, "kill_grace: must be between 1 and 600, got 601 (allowed: 1-600 seconds)"),
    ({"log_level": "LOUD"}, "log_level: must be a log level name, got 'LOUD' (allowed: DEBUG, INFO, WARNING, ERROR)"),
    (
        {"worker_id": "worker 01"},
        "worker_id: must be 1-63 letters, digits or _.:@- starting with a letter or digit, "
        "got 'worker 01' (allowed: ^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,62}$)",
    ),
    (
        {"worker_id": "w/1"},
        "worker_id: must be 1-63 letters, digits or _.:@- starting with a letter or digit, "
        "got 'w/1' (allowed: ^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,62}$)",
    ),
    ({"dsn": ""}, "dsn: must be a non-empty string, got '' (allowed: a postgresql:// URI or a libpq key=value string)"),
    (
        {"dsn": "not a dsn"},
        "dsn: is not a valid libpq connection string (allowed: a postgresql:// URI or a libpq key=value string)",
    ),
    ({"retry": [300]}, "retry: must be a mapping, got a list (allowed: base_delay, max_delay)"),
    ({"retry.base_delay": 0}, "retry.base_delay: must be between 1 and 86400, got 0 (allowed: 1-86400 seconds)"),
    (
        {"retry.base_delay": 600, "retry.max_delay": 300},
        "retry.max_delay: must be at least retry.base_delay (600), got 300 (allowed: 600-604800 seconds)",
    ),
    (
        {"retry.base_delay": 86400},
        "retry.max_delay: must be at least retry.base_delay (86400), "
        "got 21600 (the default) (allowed: 86400-604800 seconds)",
    ),
    ({"retry.tries": 3}, "retry.tries: unknown key (allowed: base_delay, max_delay)"),
    ({"tools": {}}, f"tools: must name at least one tool (allowed: {TOOLS})"),
    ({"tools": ["pg_dump"]}, f"tools: must be a mapping of tool names to settings, got a list (allowed: {TOOLS})"),
    (
        {"tools.pg_dump": "yes"},
        "tools.pg_dump: must be a mapping, got 'yes' (allowed: allowed_output_dirs, kill_grace, path, run_as, timeout)",
    ),
    (
        {"tools.pg_dump.path": "pg_dump"},
        "tools.pg_dump.path: must be an absolute path, got 'pg_dump' (allowed: an absolute path to an executable file)",
    ),
    (
        {"tools.pg_dump.path": "/usr/bin/../bin/pg_dump"},
        "tools.pg_dump.path: must not contain "
        "'..', got '/usr/bin/../bin/pg_dump' (allowed: an absolute path to an executable file)",
    ),
    (
        {"tools.pg_dump.run_as": "Post Gres"},
        "tools.pg_dump.run_as: must be a user name, got 'Post Gres' (allowed: ^[a-z_][a-z0-9_-]{0,31}$)",
    ),
    (
        {"tools.pg_dump.allowed_output_dirs": []},
        "tools.pg_dump.allowed_output_dirs: must be a non-empty list of absolute paths, got a list "
        "(allowed: a non-empty list of absolute paths of directories)",
    ),
    (
        {"tools.pg_dump.allowed_output_dirs": "/backups"},
        "tools.pg_dump.allowed_output_dirs: must be a non-empty list of absolute paths, "
        "got '/backups' (allowed: a non-empty list of absolute paths of directories)",
    ),
    (
        {"tools.pg_dump.allowed_output_dirs": ["backups"]},
        "tools.pg_dump.allowed_output_dirs[0]: must be an absolute path, got 'backups' "
        "(allowed: an absolute directory path)",
    ),
    (
        {"tools.pg_dump.allowed_output_dirs": ["/backups", "/backups/../etc"]},
        "tools.pg_dump.allowed_output_dirs[1]: must not contain '..', got '/backups/../etc' "
        "(allowed: an absolute directory path)",
    ),
    (
        {"tools.pg_dump.allowed_output_dirs": ["//"]},
        "tools.pg_dump.allowed_output_dirs[0]: must not be / (allowed: a directory set aside for backups)",
    ),
    (
        {"tools.pgbackrest.config": "pgbackrest.conf"},
        "tools.pgbackrest.config: must be an "
        "absolute path, got 'pgbackrest.conf' (allowed: an absolute path to the tool's "
        "configuration file)",
    ),
    (
        {"tools.custom": {"timeout": 60}},
        "tools.custom.allowed_commands: required (allowed: a non-empty list of absolute paths of executables)",
    ),
    (
        {"tools.custom.allowed_commands": ["backup.sh"]},
        "tools.custom.allowed_commands[0]: must be an absolute path, got 'backup.sh' "
        "(allowed: an absolute path to an executable file)",
    ),
    (
        {"tools.custom.allowed_commands": [{"path": "/opt/backup.sh", "pass_credentials": "yes please"}]},
        "tools.custom.allowed_commands[0].pass_credentials: must be true or false, got 'yes please' "
        "(allowed: true, false (default false))",
    ),
    (
        {"tools.custom.allowed_commands": [{"path": "/opt/backup.sh", "password": True}]},
        "tools.custom.allowed_commands[0].password: unknown key (allowed: path, pass_credentials)",
    ),
    (
        {"tools.custom.allowed_commands": ["/opt/a.sh", {"pass_credentials": True}]},
        "tools.custom.allowed_commands[1].path: required (allowed: an absolute path to an executable file)",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), BAD_VALUES, ids=[next(iter(changes)) for changes, _ in BAD_VALUES])
def test_bad_value_is_reported_as_one_exact_line(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    path = write_config(tmp_path, merged(BASE, changes))

    assert problems_of(path) == [f"{path}: {expected}"]


def test_only_custom_commands_whose_entry_says_pass_credentials_get_the_credentials(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        merged(
            BASE,
            {
                "tools.custom.allowed_commands": [
                    "/opt/plain.sh",
                    {"path": "/opt/trusted.sh", "pass_credentials": True},
                    {"path": "/opt/other.sh", "pass_credentials": False},
                ]
            },
        ),
    )

    custom = load_config(path, {}, check_paths=False).tools["custom"]

    assert custom.allowed_commands == ("/opt/plain.sh", "/opt/trusted.sh", "/opt/other.sh")
    assert custom.pass_credentials == ("/opt/trusted.sh",)


def test_missing_dsn_is_required(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"tools": {"pg_dump": {}}})

    assert problems_of(path) == [
        f"{path}: dsn: required (allowed: a postgresql:// URI or a libpq key=value string, "
        "or databases: a list of databases)"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        merged(
            BASE,
            {
                "workers": 0,
                "pol_interval": 5,
                "log_level": "LOUD",
                "tools.pg_dump.timeout": "abc",
                "tools.pgbakrest": {},
            },
        ),
    )

    with pytest.raises(ConfigError) as raised:
        load_config(path, {}, check_paths=False)

    assert raised.value.problems == [
        f"{path}: pol_interval: unknown key (allowed: {TOP_KEYS})",
        f"{path}: workers: must be between 1 and 64, got 0 (allowed: 1-64)",
        f"{path}: log_level: must be a log level name, got 'LOUD' (allowed: DEBUG, INFO, WARNING, ERROR)",
        f"{path}: tools.pg_dump.timeout: must be a positive integer, got 'abc' (allowed: 1-604800 seconds)",
        f"{path}: tools.pgbakrest: unknown tool (allowed: {TOOLS})",
    ]
    assert str(raised.value) == "\n".join(raised.value.problems)


def test_misspelt_top_level_key_is_an_error_not_a_default(tmp_path: Path) -> None:
    path = write_config(tmp_path, merged(BASE, {"pol_interval": 5}))

    assert problems_of(path) == [f"{path}: pol_interval: unknown key (allowed: {TOP_KEYS})"]


def test_key_a_tool_does_not_accept_is_unknown(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        merged(
            BASE,
            {
                "tools.pg_dump.config": "/etc/x.conf",
                "tools.custom": {"path": "/bin/true", "allowed_commands": ["/bin/true"]},
            },
        ),
    )

    assert problems_of(path) == [
        f"{path}: tools.pg_dump.config: unknown key (allowed: allowed_output_dirs, kill_grace, path, run_as, timeout)",
        f"{path}: tools.custom.path: unknown key (allowed: allowed_commands, kill_grace, run_as, timeout)",
    ]


def test_misspelt_tool_name_is_an_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, merged(BASE, {"tools.pgbakrest": {"run_as": "postgres"}}))

    assert problems_of(path) == [f"{path}: tools.pgbakrest: unknown tool (allowed: {TOOLS})"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("workers: yes", "workers: must be a positive integer, got true (a boolean) (allowed: 1-64)"),
        ("workers: true", "workers: must be a positive integer, got true (a boolean) (allowed: 1-64)"),
        ("poll_interval: on", "poll_interval: must be a number > 0, got true (a boolean) (allowed: 0.1-3600)"),
        (
            "shutdown_timeout: no",
            "shutdown_timeout: must be a non-negative integer, got false (a boolean) (allowed: 0-86400 seconds)",
        ),
    ],
)
def test_booleans_are_not_numbers(tmp_path: Path, text: str, shown: str) -> None:
    path = write_config(tmp_path, f"dsn: {DSN}\nworker_id: w1\ntools: {{pg_dump: {{}}}}\n{text}\n")

    assert problems_of(path) == [f"{path}: {shown}"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"dsn: {DSN}\nworkers: 2\n  poll_interval: 10\n")

    (problem,) = problems_of(path)

    assert problem.startswith(f"{path}: (file): YAML syntax error at line 3, column ")
    assert problem.endswith("(allowed: valid YAML)")


def test_yaml_syntax_error_names_where_an_unclosed_construct_began(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"dsn: {DSN}\nworkers: 2\npoll_interval: [10\nlog_level: INFO\n")

    (problem,) = problems_of(path)

    # PyYAML notices on line 4; the unclosed '[' on line 3 is what the operator must fix.
    assert problem.startswith(f"{path}: (file): YAML syntax error at line 4, column ")
    assert "flow sequence started at line 3)" in problem


def test_duplicate_key_is_an_error_not_last_one_wins(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"dsn: {DSN}\nworker_id: w1\nworkers: 2\ntools: {{pg_dump: {{}}}}\nworkers: 8\n")

    assert problems_of(path) == [
        f"{path}: (file): duplicate key 'workers' at line 5 (allowed: each key once per mapping)"
    ]


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (None, "does not exist"),
        ("", "top level must be a mapping, got an empty file"),
        ("- dsn\n- workers\n", "top level must be a mapping, got a list"),
        ("just text\n", "top level must be a mapping, got 'just text'"),
    ],
)
def test_file_level_problem_is_reported_against_the_file(tmp_path: Path, content: str | None, what: str) -> None:
    path = str(tmp_path / "supervisor.yaml")
    if content is not None:
        write_config(tmp_path, content)

    (problem,) = problems_of(path)

    assert problem.startswith(f"{path}: (file): {what} (allowed: ")


def test_directory_instead_of_file_is_reported(tmp_path: Path) -> None:
    assert problems_of(str(tmp_path)) == [
        f"{tmp_path}: (file): is a directory (allowed: a readable YAML file, named on the "
        "command line or by PGGIT_CONFIG)"
    ]


def test_lease_shorter_than_two_heartbeats_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, merged(BASE, {"heartbeat_interval": 40, "lease_seconds": 60}))

    assert problems_of(path) == [
        f"{path}: lease_seconds: must be at least twice heartbeat_interval (40), got 60 (allowed: 80-86400 seconds)"
    ]


def test_default_lease_is_checked_against_a_long_heartbeat(tmp_path: Path) -> None:
    path = write_config(tmp_path, merged(BASE, {"heartbeat_interval": 45}))

    assert problems_of(path) == [
        f"{path}: lease_seconds: must be at least twice heartbeat_interval (45), "
        "got 60 (the default) (allowed: 90-86400 seconds)"
    ]


def test_lease_of_exactly_two_heartbeats_is_accepted(tmp_path: Path) -> None:
    path = write_config(tmp_path, merged(BASE, {"heartbeat_interval": 2.5, "lease_seconds": 5}))

    assert load_config(path, {}, check_paths=False).lease_seconds == 5


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, merged(BASE, {"workers": 2, "poll_interval": 10, "log_level": "INFO"}))
    environ = {
        "PGGIT_POLL_INTERVAL": "0.2",
        "PGGIT_WORKER_ID": "env-worker",
        "PGGIT_LOG_LEVEL": "debug",
        "PGGIT_WORKERS": "4",
        "PGGIT_HEARTBEAT_INTERVAL": "3",
        "PGGIT_LEASE_SECONDS": "9",
    }

    config = load_config(path, environ, check_paths=False)

    assert (config.poll_interval, config.worker_id, config.log_level) == (0.2, "env-worker", "DEBUG")
    assert (config.workers, config.heartbeat_interval, config.lease_seconds) == (4, 3, 9)


def test_empty_environment_variable_leaves_the_file_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, merged(BASE, {"workers": 2}))

    assert load_config(path, {"PGGIT_WORKERS": ""}, check_paths=False).workers == 2


def test_bad_environment_values_are_reported_against_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE)
    environ = {
        "PGGIT_POLL_INTERVAL": "abc",
        "PGGIT_WORKERS": "yes",
        "PGGIT_LOG_LEVEL": "loud",
        "PGGIT_WORKER_ID": "bad id",
        "PGGIT_LEASE_SECONDS": "60.5",
        "PGGIT_HEARTBEAT_INTERVAL": "nan",
    }

    assert problems_of(path, environ) == [
        "environment: PGGIT_WORKER_ID: must be 1-63 letters, digits or _.:@- starting with a "
        "letter or digit, got 'bad id' (allowed: ^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,62}$)",
        "environment: PGGIT_WORKERS: must be a positive integer, got 'yes' (allowed: 1-64)",
        "environment: PGGIT_POLL_INTERVAL: must be a number > 0, got 'abc' (allowed: 0.1-3600)",
        "environment: PGGIT_HEARTBEAT_INTERVAL: must be a number > 0, got nan (allowed: 0.1-3600)",
        "environment: PGGIT_LEASE_SECONDS: must be a positive integer, got '60.5' (allowed: 5-86400 seconds)",
        "environment: PGGIT_LOG_LEVEL: must be a log level name, got 'loud' (allowed: DEBUG, INFO, WARNING, ERROR)",
    ]


def test_heartbeat_from_environment_is_named_when_it_conflicts_with_file_lease(tmp_path: Path) -> None:
    path = write_config(tmp_path, merged(BASE, {"lease_seconds": 60}))

    assert problems_of(path, {"PGGIT_HEARTBEAT_INTERVAL": "40"}) == [
        f"{path}: lease_seconds: must be at least twice heartbeat_interval "
        "(40, set by environment: PGGIT_HEARTBEAT_INTERVAL), got 60 (allowed: 80-86400 seconds)"
    ]


def only_installed(monkeypatch: pytest.MonkeyPatch, *paths: str) -> None:
    monkeypatch.setattr(host, "executable_problem", lambda path: None if path in paths else f"{path} does not exist")


def test_listener_config_needs_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "db-host-7")
    only_installed(monkeypatch, "/usr/bin/pg_dump")

    config = listener_config("postgresql://u@h/db", {})

    assert (config.dsn, config.source, config.worker_id) == ("postgresql://u@h/db", "<environment>", "db-host-7")
    assert (config.workers, config.poll_interval, config.log_level) == (1, 10, "INFO")
    assert dict(config.tools) == {"pg_dump": default_tool("pg_dump")}


def test_listener_config_enables_installed_builtins_but_never_custom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "executable_problem", lambda path: None)

    tools = listener_config("dbname=db", {}).tools

    assert sorted(tools) == ["barman", "pg_basebackup", "pg_dump", "pgbackrest"]
    assert all(tool.run_as is None for tool in tools.values())


def test_listener_config_detects_tools_really_installed_here() -> None:
    expected = {
        name for name in ("pg_dump", "pg_basebackup", "pgbackrest", "barman") if os.access(f"/usr/bin/{name}", os.X_OK)
    }
    if expected:
        assert set(listener_config("dbname=db", {}).tools) == expected
    else:
        with pytest.raises(ConfigError):
            listener_config("dbname=db", {})


def test_listener_config_honours_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    only_installed(monkeypatch, "/usr/bin/pg_dump")
    environ = {
        "PGGIT_POLL_INTERVAL": "0.2",
        "PGGIT_WORKER_ID": "listener-1",
        "PGGIT_LOG_LEVEL": "warning",
        "PGGIT_WORKERS": "3",
    }

    config = listener_config("dbname=db", environ)

    assert (config.poll_interval, config.worker_id, config.log_level, config.workers) == (
        0.2,
        "listener-1",
        "WARNING",
        3,
    )


def test_listener_config_without_any_tool_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    only_installed(monkeypatch)

    with pytest.raises(ConfigError) as raised:
        listener_config("dbname=db", {"PGGIT_WORKER_ID": "w1"})

    assert raised.value.problems == [
        "<environment>: tools: not set, and none of /usr/bin/pg_dump, /usr/bin/pg_basebackup, "
        "/usr/bin/pgbackrest, /usr/bin/barman is installed "
        f"(allowed: a mapping naming some of {TOOLS})"
    ]


def test_listener_config_reports_a_bad_dsn_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    only_installed(monkeypatch, "/usr/bin/pg_dump")

    with pytest.raises(ConfigError) as raised:
        listener_config("not a dsn", {"PGGIT_WORKERS": "yes"})

    assert raised.value.problems == [
        "command line: dsn: is not a valid libpq connection string "
        "(allowed: a postgresql:// URI or a libpq key=value string)",
        "environment: PGGIT_WORKERS: must be a positive integer, got 'yes' (allowed: 1-64)",
    ]


def test_listener_config_reads_pggit_config_and_the_dsn_argument_wins(tmp_path: Path) -> None:
    path = write_config(tmp_path, merged(BASE, {"workers": 2, "poll_interval": 30}))

    config = listener_config("dbname=from_cli", {"PGGIT_CONFIG": path, "PGGIT_POLL_INTERVAL": "5"}, check_paths=False)

    assert (config.source, config.dsn) == (path, "dbname=from_cli")
    assert (config.workers, config.poll_interval, config.worker_id) == (2, 5, "w1")
    assert list(config.tools) == ["pg_dump"]


def test_omitted_tools_section_enables_installed_builtins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only_installed(monkeypatch, "/usr/bin/pgbackrest")
    path = write_config(tmp_path, {"dsn": DSN, "worker_id": "w1"})

    assert list(load_config(path, {}, check_paths=False).tools) == ["pgbackrest"]


def test_path_checks_find_missing_and_non_executable_files(tmp_path: Path) -> None:
    script = tmp_path / "backup.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    path = write_config(
        tmp_path,
        merged(
            BASE,
            {
                "tools.pg_dump.path": str(tmp_path / "missing" / "pg_dump"),
                "tools.pg_dump.run_as": "no_such_user_pggit",
                "tools.custom.allowed_commands": [str(script)],
            },
        ),
    )

    assert problems_of(path, check_paths=True) == [
        f"{path}: tools.pg_dump.path: {tmp_path}/missing/pg_dump does not exist "
        "(allowed: an absolute path to an executable file)",
        f"{path}: tools.pg_dump.run_as: user 'no_such_user_pggit' does not exist "
        "(allowed: an existing user, or no run_as to run as the service's own user)",
        f"{path}: tools.custom.allowed_commands[0]: {script} is not executable "
        "(allowed: an absolute path to an executable file)",
    ]


def test_path_checks_pass_for_real_executables_and_users(tmp_path: Path) -> None:
    executable = tmp_path / "pg_dump"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    path = write_config(tmp_path, merged(BASE, {"tools.pg_dump.path": str(executable), "tools.pg_dump.run_as": "root"}))

    tool = load_config(path, {}, check_paths=True).tools["pg_dump"]

    assert (tool.path, tool.run_as) == (str(executable), "root")


def test_default_tool_path_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "executable_problem", lambda path: f"{path} does not exist")
    path = write_config(tmp_path, merged(BASE, {"tools": {"barman": {}}}))

    assert problems_of(path, check_paths=True) == [
        f"{path}: tools.barman.path: /usr/bin/barman does not exist (allowed: an absolute path to an executable file)"
    ]


def test_config_and_its_parts_are_frozen(tmp_path: Path) -> None:
    config = load_config(str(EXAMPLE), {}, check_paths=False)

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.retry.base_delay = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tools["pg_dump"].timeout = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.tools["pg_dump"] = default_tool("pg_dump")  # type: ignore[index]


def test_config_pickles_and_hashes_for_spawned_workers() -> None:
    config = load_config(str(EXAMPLE), {}, check_paths=False)

    copy_of = pickle.loads(pickle.dumps(config))

    assert copy_of == config and hash(copy_of) == hash(config)
    assert dict(copy_of.tools) == dict(config.tools)


def test_config_error_survives_pickling() -> None:
    error = ConfigError(["a: b: c (allowed: d)", "e: f: g (allowed: h)"])

    copy_of = pickle.loads(pickle.dumps(error))

    assert copy_of.problems == error.problems and str(copy_of) == str(error)


def test_password_stays_out_of_summary_and_repr() -> None:
    config = Config(
        dsn="postgresql://backup:s3cret@db.example:5433/prod",
        worker_id="w1",
        workers=2,
        source="/etc/pggit/supervisor.yaml",
        tools=load_config(str(EXAMPLE), {}, check_paths=False).tools,
    )

    summary = config_summary(config)

    assert "s3cret" not in summary and "s3cret" not in repr(config)
    assert "\n" not in summary
    assert summary.startswith(
        "config=/etc/pggit/supervisor.yaml worker_id=w1 workers=2 db=backup@db.example:5433/prod "
    )
    assert "tools=barman,custom,pg_basebackup,pg_dump,pgbackrest" in summary


def test_config_path_comes_from_command_line_then_pggit_config_then_default() -> None:
    assert resolve_config_path("/a.yaml", {"PGGIT_CONFIG": "/b.yaml"}) == "/a.yaml"
    assert resolve_config_path(None, {"PGGIT_CONFIG": "/b.yaml"}) == "/b.yaml"
    assert resolve_config_path(None, {}) == DEFAULT_CONFIG_PATH
