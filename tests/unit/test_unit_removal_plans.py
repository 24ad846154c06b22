"""Each adapter's removal plan (expiry step 2) as data: the exact argv and user of pgBackRest's
and Barman's removals, what counts as already gone, and the locations every plan refuses for
good (not the tool's, outside allowed_output_dirs, a name the adapter never gives)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pggit_supervisor.config import default_tool
from pggit_supervisor.errors import JobError
from pggit_supervisor.runner import CapturedOutput, RunResult, RunSpec
from pggit_supervisor.tools import ADAPTERS, Remover, remover_for, run_removal
from pggit_supervisor.tools.restoring import Backup


def backup(tool: str, location: str, **metadata) -> Backup:
    return Backup("b1", tool, "completed", location, metadata)


def result(spec: RunSpec, code: int, stderr: bytes = b"", stdout: bytes = b"") -> RunResult:
    err = CapturedOutput(head=stderr)
    return RunResult(spec.argv, code, None, False, None, 0.1, spec.timeout, CapturedOutput(head=stdout), err)


def info(*backups: dict) -> bytes:
    """`pgbackrest --output=json info` of stanza main holding `backups`."""
    return json.dumps([{"name": "main", "backup": list(backups)}]).encode()


def answers(info_out: bytes, code: int = 0, stderr: bytes = b""):
    """A run that answers `info` with info_out and the expire with (code, stderr); records argv."""
    ran: list[tuple[str, ...]] = []

    def run(spec: RunSpec) -> RunResult:
        ran.append(spec.argv)
        if spec.argv[-1] == "info":
            return result(spec, 0, stdout=info_out)
        return result(spec, code, stderr)

    return run, ran


def test_every_backup_tool_retention_targets_has_a_removal_plan_and_no_other_tool_does():
    assert sorted(name for name, each in ADAPTERS.items() if isinstance(each, Remover)) == [
        "barman",
        "pg_basebackup",
        "pg_dump",
        "pgbackrest",
    ]
    with pytest.raises(JobError, match="not removed by retention") as caught:
        remover_for("custom")
    assert not caught.value.retryable


def test_pgbackrest_expires_the_set_of_the_location_as_run_as_in_its_repository():
    tool = replace(default_tool("pgbackrest"), path="/usr/bin/pgbackrest", run_as="postgres", config="/etc/pb.conf")
    plan = remover_for("pgbackrest").removal_plan(
        backup("pgbackrest", "pgbackrest://main/20261201-000000F_20261202-000000I", repo=2), tool
    )
    (step,) = plan.steps
    assert step.argv == (
        "/usr/bin/pgbackrest",
        "--config=/etc/pb.conf",
        "--stanza=main",
        "--repo=2",
        "--set=20261201-000000F_20261202-000000I",
        "expire",
    )
    assert step.run_as == "postgres"
    assert (
        plan.guard is not None and plan.guard.argv[-2:] == ("--output=json", "info") and plan.guard.run_as == "postgres"
    )
    alone = info({"label": "20261201-000000F"}, {"label": "20261201-000000F_20261202-000000I"})
    run, ran = answers(alone)
    assert run_removal(plan, run) is None and ran[-1] == step.argv
    gone = b"ERROR: [075]: backup set 20261201-000000F_20261202-000000I is not valid"
    assert run_removal(plan, answers(info(), 75, gone)[0]) is None, "a set pgBackRest no longer has"
    failed = run_removal(plan, answers(alone, 41, b"ERROR: [041]: unable to open repo")[0])
    assert failed is not None and failed.startswith("removing pgBackRest set 20261201-000000F_20261202-000000I")
    assert "unable to open repo" in failed


def test_a_pgbackrest_set_is_held_while_the_repository_has_a_dependant_the_queue_does_not_hold_as_expired():
    """`expire --set` of a full takes every set depending on it, transitively: one a DBA made by
    hand, or one another queue database recorded, would go without any rule having let it."""
    tool = replace(default_tool("pgbackrest"), path="/usr/bin/pgbackrest", run_as="postgres")
    full = "20261201-000000F"
    plan = remover_for("pgbackrest").removal_plan(backup("pgbackrest", f"pgbackrest://main/{full}"), tool)
    diff, incr = f"{full}_20261202-000000D", f"{full}_20261203-000000I"
    repository = info(
        {"label": full},
        {"label": diff, "prior": full, "reference": [full]},
        {"label": incr, "prior": diff, "reference": [full, diff]},
        {"label": "20261204-000000F"},
    )
    run, ran = answers(repository)
    held = run_removal(plan, run)
    assert held == (
        f"held: pgBackRest would expire with {full} the set(s) {diff}, {incr} that depend on it, which this "
        "queue does not hold as expired (made by hand, or recorded in another database)"
    )
    assert [argv[-1] for argv in ran] == ["info"], "nothing is expired"
    run, _ = answers(repository)
    partly = frozenset({f"pgbackrest://main/{diff}"})
    assert run_removal(plan, run, partly) == held.replace(f"{diff}, {incr}", incr), "the expired one is not named"
    run, ran = answers(repository)
    both = frozenset({f"pgbackrest://main/{diff}", f"pgbackrest://main/{incr}"})
    assert run_removal(plan, run, both) is None and ran[-1][-1] == "expire", "they are expired here too: they go"
    broken, _ = answers(b"not json")
    assert (run_removal(plan, broken) or "").startswith("held: pgbackrest info did not parse")


def test_barman_deletes_the_backup_of_the_location_as_run_as():
    tool = replace(default_tool("barman"), path="/usr/bin/barman", run_as="barman", config="/etc/barman.conf")
    plan = remover_for("barman").removal_plan(backup("barman", "barman://pg/20261201T020000"), tool)
    (step,) = plan.steps
    assert step.argv == ("/usr/bin/barman", "-c", "/etc/barman.conf", "delete", "pg", "20261201T020000")
    assert step.run_as == "barman"
    unknown = b"ERROR: Unknown backup '20261201T020000' for server 'pg'"
    assert run_removal(plan, lambda spec: result(spec, 1, unknown)) is None
    assert run_removal(plan, lambda spec: result(spec, 1, b"ERROR: another process holds the lock")) is not None


@pytest.mark.parametrize(
    "tool, location, words",
    [
        ("pgbackrest", "pgbackrest://main/latest", "not a pgBackRest backup location"),
        ("pgbackrest", "file:///backups/x", "not a pgBackRest backup location"),
        ("barman", "barman://-x/20240101T000000", "not a Barman backup location"),
        ("barman", "barman://pg/../../etc", "not a Barman backup location"),
        ("pg_dump", "file:///backups", "is not a name pg_dump gives its backups"),
        ("pg_dump", "file:///backups/weekly", "is not a name pg_dump gives its backups"),
        ("pg_dump", "pgbackrest://main/20261201-000000F", "is not a file:// path"),
        ("pg_basebackup", "file:///backups/../etc/pg_basebackup-x", "without '..'"),
        ("pg_basebackup", "file:///backups/pg_dump-main-x", "is not a name pg_basebackup gives"),
    ],
)
def test_a_location_that_is_not_one_the_adapter_writes_is_refused_for_good(tool, location, words):
    with pytest.raises(JobError, match=words) as caught:
        remover_for(tool).removal_plan(backup(tool, location), default_tool(tool))
    assert not caught.value.retryable


def test_a_file_outside_allowed_output_dirs_is_refused_and_left_alone(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "pg_dump-main-x.dump"
    victim.write_text("not under the allowed directory")
    tool = replace(default_tool("pg_dump"), allowed_output_dirs=(str(tmp_path / "allowed"),))
    plan = remover_for("pg_dump").removal_plan(backup("pg_dump", f"file://{victim}"), tool)
    with pytest.raises(JobError, match="is not under tools.pg_dump.allowed_output_dirs") as caught:
        run_removal(plan, lambda spec: pytest.fail("no command runs for a file removal"))
    assert not caught.value.retryable and victim.read_text() == "not under the allowed directory"
