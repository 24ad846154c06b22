"""The session's check for missing tools names each one and the one command that installs them,
and the run stops before any test instead of failing in many unrelated ways."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import prerequisites
from helpers.cluster import BIN

ROOT = Path(__file__).resolve().parents[2]


def test_on_this_machine_nothing_is_missing():
    assert prerequisites.missing(BIN) == []


def test_every_missing_command_and_server_program_is_named(tmp_path):
    absent = prerequisites.missing(tmp_path / "no-server", path=str(tmp_path))

    for name in ("pgbackrest", "barman", "pg_dump", "runuser", "tar", "git"):
        assert f"{name} (command)" in absent
    assert f"{tmp_path / 'no-server' / 'initdb'} (PostgreSQL 15 server)" in absent
    assert "sh packaging/install-deps.sh" in prerequisites.report(absent)


def test_a_run_without_pgbackrest_stops_at_session_start_naming_it(tmp_path):
    # a PATH with everything but pgbackrest
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for entry in Path(directory).iterdir() if Path(directory).is_dir() else ():
            if entry.name != "pgbackrest" and not (tmp_path / entry.name).exists() and os.access(entry, os.X_OK):
                (tmp_path / entry.name).symlink_to(entry)
    env = {**os.environ, "PATH": str(tmp_path)}

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/sql/test_smoke.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    output = run.stdout + run.stderr
    assert run.returncode == 4, output  # pytest's usage error: nothing ran
    assert "missing for the tests: pgbackrest (command)" in output
    assert "sh packaging/install-deps.sh" in output
    assert run.stdout.count("pgbackrest") == 1, "named once in the report, not once per test"


def test_readme_ci_and_the_missing_tool_report_name_one_install_script():
    readme = (ROOT / "README.md").read_text()
    newcomer = readme[readme.index("## For a newcomer") : readme.index("## Installing the Debian package")]
    ci = (ROOT / ".ci" / "run").read_text()

    assert "sh packaging/install-deps.sh" in newcomer
    assert "\nsh packaging/install-deps.sh\n" in ci, ".ci/run installs with the README's script"
    assert "apt-get install" not in ci.split("make deb")[0], "and with nothing else before the build"
    assert (ROOT / "packaging" / "install-deps.sh").is_file()
    check = subprocess.run(["sh", "packaging/install-deps.sh", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # this machine has everything: the script agrees
