"""check-config looks at the queue login once it has validated the file: a superuser is a
warning (the service needs far less), an unreachable database a note, and neither an error."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg2
import yaml

from helpers import ROOT
from helpers.db import scalar


def _check(tmp_path, dsn: str, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "supervisor.yaml"
    path.write_text(yaml.safe_dump({"dsn": dsn, "worker_id": "w1", "tools": {"pg_dump": {}}}))
    return subprocess.run(
        [sys.executable, "-m", "pggit_supervisor", "check-config", "-c", str(path), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_check_config_warns_when_the_queue_login_is_a_superuser(tmp_path, dsn, db):
    assert scalar(db, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    out = _check(tmp_path, dsn)
    assert out.returncode == 0 and ": OK " in out.stdout
    assert "warning: dsn: the queue login 'postgres' is a superuser" in out.stderr
    assert "pggit_backup_worker" in out.stderr and "pg_read_all_data" in out.stderr


def test_check_config_is_quiet_for_a_worker_login_and_offline(tmp_path, dsn, db):
    login = "pggit_backup_" + uuid.uuid4().hex[:8]
    db.cursor().execute(f'CREATE ROLE "{login}" LOGIN IN ROLE pggit_backup_worker')
    try:
        out = _check(tmp_path, psycopg2.extensions.make_dsn(dsn, user=login))
        assert out.returncode == 0 and out.stderr == ""
        offline = _check(tmp_path, dsn, "--offline")
        assert offline.returncode == 0 and offline.stderr == "", "--offline does not connect"
    finally:
        db.cursor().execute(f'DROP ROLE "{login}"')


def test_check_config_notes_an_unreachable_database_without_failing(tmp_path):
    out = _check(tmp_path, "host=127.0.0.1 port=1 user=nobody dbname=nothing connect_timeout=2")
    assert out.returncode == 0 and "could not connect to check the queue login's rights" in out.stderr


def test_check_config_checks_each_listed_database_naming_it(tmp_path, dsn):
    path = tmp_path / "supervisor.yaml"
    unreachable = "host=127.0.0.1 port=1 user=nobody dbname=nothing connect_timeout=2"
    databases = [{"name": "app", "dsn": dsn}, {"name": "offsite", "dsn": unreachable}]
    path.write_text(yaml.safe_dump({"databases": databases, "worker_id": "w1", "tools": {"pg_dump": {}}}))
    command = [sys.executable, "-m", "pggit_supervisor", "check-config", "-c", str(path)]

    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)

    assert out.returncode == 0 and ": OK " in out.stdout and "databases=app:" in out.stdout
    warnings = out.stderr.splitlines()
    assert len(warnings) == 2, out.stderr
    assert "warning: database 'app': dsn: the queue login 'postgres' is a superuser" in warnings[0]
    assert "warning: database 'offsite': could not connect to check the queue login's rights" in warnings[1]

    databases[1]["workers"] = 100
    path.write_text(yaml.safe_dump({"databases": databases, "worker_id": "w1", "tools": {"pg_dump": {}}}))
    bad = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        f"{path}: databases[1].workers: database 'offsite': must be between 1 and 64, got 100 (allowed: 1-64)"
    )
