"""Each tool's restore plan is its adapter's (issue 9, §3): what `pggit-supervisor restore` and
the restore drill run, built from a backup row and checked before anything is touched; the
registry alone says which tools restore; the package's imports have no cycle; every tool records
its verification the same way."""

from __future__ import annotations

import ast
import gzip
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from helpers import ROOT
from pggit_supervisor.config import default_tool
from pggit_supervisor.errors import JobError
from pggit_supervisor.runner import RunSpec, run_tool
from pggit_supervisor.tools import ADAPTERS, Verification, restorer_for
from pggit_supervisor.tools.restoring import Backup, RestorePlan, RestoreTarget, run_plan

PACKAGE = ROOT / "pggit_supervisor"


def _backup(tool: str, location: str, **metadata) -> Backup:
    return Backup("00000000-0000-0000-0000-000000000001", tool, "completed", location, metadata)


def _tool(name: str, allowed: Path, run_as: str | None = None):
    return replace(default_tool(name), allowed_output_dirs=(str(allowed),), run_as=run_as)


def test_the_registry_alone_says_which_tools_restore_and_into_what():
    restorers = {name: restorer_for(name).restores_into for name in ADAPTERS if name not in ("custom", "restore_test")}
    assert restorers == {
        "pg_dump": "database",
        "pg_basebackup": "directory",
        "pgbackrest": "directory",
        "barman": "directory",
    }
    for tool in ("custom", "restore_test", "nosuchtool"):
        with pytest.raises(JobError, match="restored by their own tooling") as refused:
            restorer_for(tool)
        assert not refused.value.retryable and "pg_dump" in refused.value.message


def test_custom_dump_plan_restores_with_pg_restore_as_the_tools_user_without_a_password_on_the_command_line(tmp_path):
    dump = tmp_path / "main.dump"
    dump.write_bytes(b"PGDMP")
    tool = _tool("pg_dump", tmp_path, run_as="postgres")
    plan = restorer_for("pg_dump").restore_plan(
        _backup("pg_dump", f"file://{dump}", format="custom", restore_jobs=4),
        tool,
        RestoreTarget(dsn="host=/tmp port=5432 user=owner password=secret dbname=target"),
    )
    (step,) = plan.steps
    assert step.argv == (
        "/usr/bin/pg_restore",
        "--exit-on-error",
        "--no-owner",
        "--dbname=target",
        "--jobs=4",
        str(dump),
    )
    assert step.run_as == "postgres" and step.env["PGPASSWORD"] == "secret" and "PGDATABASE" not in step.env
    assert not plan.ask_first and "secret" not in " ".join(step.argv)


def test_compressed_plain_dump_plan_decompresses_into_scratch_and_feeds_psql(tmp_path):
    script = b"CREATE TABLE t (n int);\n-- PostgreSQL database dump complete\n"
    dump = tmp_path / "main.sql.gz"
    dump.write_bytes(gzip.compress(script))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    plan = restorer_for("pg_dump").restore_plan(
        _backup("pg_dump", f"file://{dump}", format="plain"),
        _tool("pg_dump", tmp_path),
        RestoreTarget(dsn="dbname=target", scratch=str(scratch)),
    )
    (step,) = plan.steps
    assert step.argv[0].endswith("/psql") and step.argv[-2:] == ("-f", str(scratch / "dump.sql"))
    assert plan.setup is not None
    plan.setup()
    assert (scratch / "dump.sql").read_bytes() == script


def test_tar_base_backup_plan_extracts_base_and_wal_into_a_new_private_directory(tmp_path):
    backup = tmp_path / "bb"
    backup.mkdir()
    (backup / "base.tar.gz").write_bytes(b"")
    (backup / "pg_wal.tar.gz").write_bytes(b"")
    target = tmp_path / "restored" / "data"
    plan = restorer_for("pg_basebackup").restore_plan(
        _backup("pg_basebackup", f"file://{backup}", format="tar"),
        _tool("pg_basebackup", tmp_path),
        RestoreTarget(directory=str(target)),
    )
    assert [step.argv for step in plan.steps] == [
        ("/bin/tar", "-x", "-f", str(backup / "base.tar.gz"), "-C", str(target)),
        ("/bin/mkdir", "-p", str(target / "pg_wal")),
        ("/bin/tar", "-x", "-f", str(backup / "pg_wal.tar.gz"), "-C", str(target / "pg_wal")),
    ]
    assert not target.exists(), "building a plan touches nothing"
    plan.setup()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700


def test_pgbackrest_and_barman_plans_are_shown_before_they_run(tmp_path):
    pgbackrest = restorer_for("pgbackrest").restore_plan(
        _backup("pgbackrest", "pgbackrest://main/20260102-000000F", repo=2),
        default_tool("pgbackrest"),
        RestoreTarget(directory="/srv/copy"),
    )
    assert pgbackrest.ask_first and "--repo=2" in pgbackrest.steps[0].argv
    assert pgbackrest.steps[0].argv[-1] == "restore"
    barman = restorer_for("barman").restore_plan(
        _backup("barman", "barman://pg/20260102T000000"),
        replace(default_tool("barman"), run_as="barman"),
        RestoreTarget(directory="/srv/copy"),
    )
    assert barman.ask_first and barman.steps[0].argv[-4:] == ("recover", "pg", "20260102T000000", "/srv/copy")
    assert barman.note is not None and "chown -R postgres: /srv/copy" in barman.note


@pytest.mark.parametrize(
    ("tool", "location", "target", "words"),
    [
        (
            "pg_dump",
            "file:///etc/passwd",
            RestoreTarget(dsn="dbname=x"),
            "is not under tools.pg_dump.allowed_output_dirs",
        ),
        ("pg_dump", "file:--role=postgres", RestoreTarget(dsn="dbname=x"), "not an absolute file:// path"),
        ("pg_dump", "file:///{dir}/x.dump", RestoreTarget(directory="/srv"), "give --target-dsn"),
        ("pg_basebackup", "file:///{dir}/bb", RestoreTarget(dsn="dbname=x"), "give --target-dir"),
        ("pgbackrest", "pgbackrest://main/latest", RestoreTarget(directory="/srv"), "not a pgBackRest backup location"),
        ("barman", "barman://pg/20260102T000000", RestoreTarget(directory="relative"), "not an absolute path"),
    ],
)
def test_a_plan_that_can_never_work_is_refused_for_good(tmp_path, tool, location, target, words):
    with pytest.raises(JobError, match=words) as refused:
        restorer_for(tool).restore_plan(
            _backup(tool, location.replace("/{dir}", str(tmp_path)), format="custom"), _tool(tool, tmp_path), target
        )
    assert not refused.value.retryable


def test_an_unknown_dump_format_is_refused_before_an_argv_is_built(tmp_path):
    dump = tmp_path / "x.dump"
    dump.write_bytes(b"")
    with pytest.raises(JobError, match="metadata.format 'sql; rm' is not one of"):
        restorer_for("pg_dump").restore_plan(
            _backup("pg_dump", f"file://{dump}", format="sql; rm"), _tool("pg_dump", tmp_path), RestoreTarget(dsn="x=y")
        )


def test_run_plan_stops_at_the_first_failed_step(tmp_path):
    marker = tmp_path / "ran"
    steps = (
        RunSpec(("/bin/false",), {}, 10.0),
        RunSpec(("/usr/bin/touch", str(marker)), {}, 10.0),
    )
    result = run_plan(RestorePlan(steps), run_tool)
    assert not result.ok and not marker.exists()


def test_every_tool_records_its_verification_the_same_way():
    passed = Verification.passed("pgbackrest verify", scope="whole stanza")
    assert passed.facts() == {
        "verified": True,
        "verified_by": "pgbackrest verify",
        "verification": {"scope": "whole stanza"},
    }
    assert Verification.passed("pg_verifybackup").facts() == {"verified": True, "verified_by": "pg_verifybackup"}
    waiting = Verification.unverifiable("the backup is WAITING_FOR_WALS")
    assert waiting.facts() == {"verified": False, "verification": "not verified: the backup is WAITING_FOR_WALS"}
    assert not waiting.fails_job and waiting.summary.startswith("not verified")
    damaged = Verification.failed("pg_verifybackup exit 1")
    assert damaged.fails_job and damaged.failure().message == "verification failed: pg_verifybackup exit 1"
    assert damaged.failure().retryable, "a damaged backup is made again by the retry"


def _module_imports() -> dict[str, set[str]]:
    """Each package module's module-level imports of other package modules (a submodule
    import also imports its parent packages)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("pggit_supervisor", *path.relative_to(PACKAGE).with_suffix("").parts))
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                names = [f"{target}.{alias.name}" for alias in node.names]
                found.update(n for n in names if n in modules)
                if target in modules and not any(n in modules for n in names):
                    found.add(target)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in modules)
        for target in list(found):
            while "." in target:
                target = target.rpartition(".")[0]
                if target in modules and not name.startswith(target + "."):
                    found.add(target)
        graph[name] = found - {name}
    return graph


def test_the_package_imports_have_no_cycle():
    graph = _module_imports()
    assert "pggit_supervisor.tools.base" in graph["pggit_supervisor.tools.pg_dump"], "the graph was read"
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
    # the adapters sit above their shared helpers, and restore.py above the adapters
    assert "pggit_supervisor.tools" in graph["pggit_supervisor.restore"]
    for below in ("pggit_supervisor.files", "pggit_supervisor.libpq", "pggit_supervisor.sandbox"):
        assert not any(imported.startswith("pggit_supervisor.tools") for imported in graph[below]), below


def test_no_module_of_the_package_imports_inside_a_function():
    """An import inside a function is how a cycle gets dodged instead of removed: there is none."""
    hidden = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        hidden.append(f"{path.relative_to(PACKAGE)}:{inner.lineno} in {node.name}()")
    assert hidden == []
