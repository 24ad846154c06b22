"""The command people see is the command that ran (issue 9, §5), with a real supervisor: the
requested command until the tool starts, then the exact argv the worker started, shell-quoted,
in the view and in the job's result record. pg_dump's differs from its requested one by the
snapshot it shares; a drill records its main command, the copy into its sandbox."""

from __future__ import annotations

import os
import shlex
import shutil

import pytest

from helpers.db import scalar
from helpers.processes import wait_until
from helpers.service import job_row, wait_for_state
from helpers.session import FAKE_TOOL


@pytest.fixture
def service(make_service):
    return lambda **settings: make_service(workers=1, **settings).start()


def enqueue_custom(db, tmp_path, command, name="named", max_attempts=3):
    backup_id = scalar(
        db, "SELECT pggit.register_backup(%s, 'full', 'custom', %s, p_branch_name := 'main')", (name, str(tmp_path))
    )
    return str(scalar(db, "SELECT pggit.enqueue_backup_job(%s, %s, 'custom', %s)", (backup_id, command, max_attempts)))


def result_of(db, job_id):
    return scalar(db, "SELECT result FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))


def test_a_running_custom_command_shows_the_resolved_argv_it_started(service, db, tmp_path):
    # asked by its base name: the worker runs the allowlisted absolute path, and says so
    requested = f"{os.path.basename(FAKE_TOOL)} --sleep 2 --stdout-bytes 3"
    job_id = enqueue_custom(db, tmp_path, requested)
    assert (job_row(db, job_id)["command_source"], job_row(db, job_id)["command"]) == ("requested", requested)
    service()
    argv = [FAKE_TOOL, "--sleep", "2", "--stdout-bytes", "3"]
    row = wait_until(lambda: (r := job_row(db, job_id))["command_source"] == "ran" and r, 15, "the command recorded")
    assert row["job_state"] == "in_progress", "recorded when the tool starts, not when it ends"
    assert (row["command"], row["requested_command"]) == (shlex.join(argv), requested)
    wait_for_state(db, job_id, "completed")
    assert result_of(db, job_id)["argv"] == argv
    assert job_row(db, job_id)["command"] == shlex.join(argv), "a finished job keeps showing what ran"


def test_a_tool_that_never_starts_fails_for_good_naming_it_and_keeps_the_requested_command(service, db, tmp_path):
    script = tmp_path / "vanishing.py"
    shutil.copy(FAKE_TOOL, script)
    os.chmod(script, 0o755)
    svc = service(tools={"custom": {"allowed_commands": [str(script)], "timeout": 600}})
    svc.wait_for_log("worker started")
    script.unlink()  # removed after the config was checked: the binary is missing when the job runs
    job_id = enqueue_custom(db, tmp_path, f"{script} --exit 0", name="gone")
    row = wait_for_state(db, job_id, {"permanently_failed", "will_retry", "completed"})
    assert row["job_state"] == "permanently_failed", "a missing binary stays missing: no retry"
    assert f"{script} does not exist" in row["last_error"]
    assert (row["command_source"], row["command"]) == ("requested", f"{script} --exit 0")


def test_a_pg_dump_job_shows_the_snapshot_it_dumped_and_its_drill_the_copy_it_made(service, db, backup_dir):
    db.cursor().execute("CREATE TABLE public.ran_orders AS SELECT g AS id FROM generate_series(1, 10) g")
    service(tools={"pg_dump": {"run_as": "postgres", "allowed_output_dirs": [str(backup_dir)]}})
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', %s)", (str(backup_dir),))
    job_id = str(scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)))
    row = wait_for_state(db, job_id, "completed", timeout=60)
    assert row["command_source"] == "ran" and "--snapshot=" not in row["requested_command"]
    argv = shlex.split(row["command"])
    assert argv[0].endswith("/pg_dump") and any(word.startswith("--snapshot=") for word in argv)
    assert result_of(db, job_id)["argv"] == argv
    drill = str(scalar(db, "SELECT pggit.schedule_restore_test(%s)", (backup_id,)))
    drilled = wait_for_state(db, drill, "completed", timeout=90)
    assert drilled["command_source"] == "ran"
    assert shlex.split(drilled["command"])[0] == "/bin/cp", "the drill's main command copies the backup in"
