"""How `pggit-supervisor` ends on an error, by the error's type: our own errors (PggitError) and
the database's (psycopg2.Error) are one line and exit 1, an invalid config exits 2, and anything
else is a bug that keeps its traceback."""

from __future__ import annotations

import psycopg2
import pytest

from pggit_supervisor import cli, schema
from pggit_supervisor.config import ConfigError
from pggit_supervisor.errors import JobError, PggitError


def failing_status(exc: BaseException):
    def status(dsn, directory=None):
        raise exc

    return status


def run_status(monkeypatch, capsys, exc):
    monkeypatch.setattr(schema, "status", failing_status(exc))
    code = cli.main(["schema", "status", "--dsn", "dbname=unused"])
    return code, capsys.readouterr().err


def test_config_and_schema_errors_are_ours():
    assert issubclass(ConfigError, PggitError) and issubclass(schema.SchemaError, PggitError)


@pytest.mark.parametrize(
    "exc,line",
    [
        (
            schema.SchemaError("schema files not found; looked in /x"),
            "pggit-supervisor: schema files not found; looked in /x\n",
        ),
        (JobError("tool missing", retryable=False), "pggit-supervisor: tool missing\n"),
        (psycopg2.OperationalError("connection refused\n"), "pggit-supervisor: database error: connection refused\n"),
    ],
)
def test_our_errors_and_the_databases_are_one_line_and_exit_1(monkeypatch, capsys, exc, line):
    assert run_status(monkeypatch, capsys, exc) == (1, line)


def test_an_invalid_config_lists_its_problems_and_exits_2(monkeypatch, capsys):
    problems = ["supervisor.yaml: workers: 0 is not allowed (allowed: 1 to 64)", "supervisor.yaml: dsn: missing"]
    assert run_status(monkeypatch, capsys, ConfigError(problems)) == (2, "\n".join(problems) + "\n")


def test_anything_else_is_a_bug_and_keeps_its_traceback(monkeypatch, capsys):
    with pytest.raises(KeyError, match="oops"):
        run_status(monkeypatch, capsys, KeyError("oops"))
