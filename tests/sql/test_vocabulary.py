"""One vocabulary: the SQL and the Python registry (pggit_supervisor.tools) name the same tools,
accept the same stanza and server names and the same values of every tool parameter, and every
function says a job's state by the one rule, pggit.backup_job_state.

The SQL side is read from the installed database: the CHECK constraint's definition, and the
validating functions called with every allowed value and with values just outside. A value
added or dropped on either side fails a test here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import psycopg2
import pytest

from helpers.db import query, scalar
from pggit_supervisor import config
from pggit_supervisor.errors import JobError
from pggit_supervisor.specs.barman import RESERVED_SERVERS, REUSE_BACKUP_ALIASES, BarmanParams
from pggit_supervisor.specs.pg_basebackup import COMPRESSION_LEVELS, BaseBackupParams
from pggit_supervisor.specs.pg_dump import DUMP_FORMATS, SCHEMA_NAME, DumpParams
from pggit_supervisor.specs.pgbackrest import BackRestParams
from pggit_supervisor.tools import NAME_PATTERN, PARAMETERS, TOOLS, Choice, IntRange, Parameter

PARSERS: Mapping[str, Callable[[Mapping[str, Any]], object]] = {
    "pg_dump": DumpParams.parse,
    "pg_basebackup": BaseBackupParams.parse,
    "pgbackrest": BackRestParams.parse,
    "barman": BarmanParams.parse,
}

STATES = {"ready", "in_progress", "will_retry", "permanently_failed", "completed", "cancelled"}


# --- the SQL side, called the way an operator calls it ----------------------------------------


def schedule(tool: str, key: str, value: Any, method: str | None = None) -> tuple[str, tuple[Any, ...]]:
    """The scheduling call that hands `value` to the SQL as the tool's parameter `key`."""
    if tool == "pg_dump":
        if key == "format":
            return "SELECT pggit.backup_pg_dump('main', NULL, %s, '/backups', '{}')", (value,)
        fmt = "directory" if key == "jobs" else "custom"
        return "SELECT pggit.backup_pg_dump('main', NULL, %s, '/backups', %s)", (fmt, json.dumps({key: value}))
    if tool == "pg_basebackup":
        options: dict[str, Any] = {key: value}
        if key == "compression":
            options["format"] = "tar"
        if key == "compression_level":
            options.update(format="tar", compression=method)
        return "SELECT pggit.backup_pg_basebackup('main', '/backups', %s)", (json.dumps(options),)
    if tool == "pgbackrest":
        if key == "type":
            return "SELECT pggit.backup_pgbackrest(%s, 'main', 'vocab', '{}')", (value,)
        return "SELECT pggit.backup_pgbackrest('full', 'main', 'vocab', %s)", (json.dumps({key: value}),)
    if tool == "barman":
        # the operator's option is Barman's own spelling; the spec stores it as reuse_backup
        return "SELECT pggit.backup_barman('pg-main', 'main', %s)", (json.dumps({key.replace("_", "-"): value}),)
    raise AssertionError(f"no scheduling function for {tool}")


def sql_outcome(db, statement: str, args: tuple[Any, ...]) -> tuple[dict[str, Any] | None, str | None]:
    """(the params the SQL stored in the job's spec, None) or, when it refused the value with
    22023, (None, the error's HINT: what the SQL allows)."""
    try:
        backup_id = scalar(db, statement, args)
    except psycopg2.errors.InvalidParameterValue as refused:
        assert refused.diag.column_name and refused.diag.message_hint, refused
        return None, refused.diag.message_hint
    return scalar(db, "SELECT spec -> 'params' FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,)), None


def sql_params(db, statement: str, args: tuple[Any, ...]) -> dict[str, Any] | None:
    return sql_outcome(db, statement, args)[0]


def sql_allows(hints: list[str]) -> set[Any]:
    """What the SQL's hints say it allows: 'one of: a, b' or 'an integer from LOW to HIGH'."""
    said = set()
    for hint in hints:
        if listed := re.fullmatch(r"one of: (.*)", hint):
            said.add(frozenset(listed.group(1).split(", ")))
        elif bounds := re.match(r"an integer from (-?\d+) to (-?\d+)", hint):
            said.add((int(bounds.group(1)), int(bounds.group(2))))
    assert len(said) == 1, hints
    return said.pop()


def python_accepts(tool: str, params: Mapping[str, Any]) -> bool:
    try:
        PARSERS[tool](params)
    except JobError:
        return False
    return True


def candidates(parameter: Parameter) -> list[Any]:
    """Every allowed value and values just outside it."""
    if isinstance(parameter, IntRange):
        return [parameter.low - 1, parameter.low, parameter.high, parameter.high + 1]
    first = parameter.values[0]
    return [*parameter.values, "", first.upper(), first + "x", " " + first, "none-of-these"]


def allowed(parameter: Parameter) -> set[Any]:
    if isinstance(parameter, IntRange):
        return {parameter.low, parameter.high}
    return set(parameter.values)


def agreement(db, tool: str, key: str, parameter: Parameter, method: str | None = None) -> None:
    """SQL and Python accept exactly the declared values of one parameter, and the Python parse
    accepts every spec the SQL wrote for them."""
    aliases = dict(REUSE_BACKUP_ALIASES) if (tool, key) == ("barman", "reuse_backup") else {}
    tried = candidates(parameter) + list(aliases)
    sql_accepted, python_accepted, hints = set(), set(), []
    base: dict[str, Any] | None = None
    for value in tried:
        stored, hint = sql_outcome(db, *schedule(tool, key, value, method))
        if hint is not None:
            hints.append(hint)
        if stored is not None:
            sql_accepted.add(value)
            assert stored[key] == aliases.get(value, value), (tool, key, value, stored)
            assert python_accepts(tool, stored), (tool, key, stored)
            base = stored
    assert base is not None, f"the SQL refused every value of {tool} {key}"
    for value in candidates(parameter):
        if python_accepts(tool, {**base, key: value}):
            python_accepted.add(value)
    assert sql_accepted == allowed(parameter) | set(aliases), (tool, key, sql_accepted)
    # the SQL's own list (or range), as its refusals state it, is the declaration
    if isinstance(parameter, IntRange):
        assert sql_allows(hints) == (parameter.low, parameter.high), (tool, key, hints)
    else:
        assert sql_allows(hints) == frozenset(parameter.values) | set(aliases), (tool, key, hints)
    assert python_accepted == allowed(parameter), (tool, key, python_accepted)


# --- tools --------------------------------------------------------------------------------------


def test_backup_jobs_tool_check_lists_exactly_the_registrys_tools(db):
    definitions = [
        row["def"]
        for row in query(
            db,
            """SELECT pg_get_constraintdef(c.oid) AS def FROM pg_constraint c
                WHERE c.conrelid = 'pggit.backup_jobs'::regclass AND c.contype = 'c'
                  AND pg_get_constraintdef(c.oid) ~ '\\mtool\\M'""",
        )
    ]
    assert len(definitions) == 1, definitions
    assert set(re.findall(r"'([^']*)'::text", definitions[0])) == set(TOOLS)


def test_claim_takes_exactly_the_registrys_tools(db):
    for tool in TOOLS:
        assert query(db, "SELECT * FROM pggit.claim_backup_job('vocab-worker', ARRAY[%s], 60)", (tool,)) == []
    for outside in ("pg_dumpall", "PG_DUMP", "", "pgbackrest ", "restore-test"):
        with pytest.raises(psycopg2.errors.InvalidParameterValue) as refused:
            query(db, "SELECT * FROM pggit.claim_backup_job('vocab-worker', ARRAY[%s], 60)", (outside,))
        assert refused.value.diag.column_name == "p_tools"
        assert sql_allows([refused.value.diag.message_hint]) == frozenset(TOOLS)


def test_every_job_tool_fits_the_backups_tool_pattern(db):
    definition = scalar(
        db,
        """SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
            WHERE c.conrelid = 'pggit.backups'::regclass AND c.contype = 'c'
              AND pg_get_constraintdef(c.oid) ~ 'backup_tool'""",
    )
    pattern = re.search(r"'([^']*)'::text", definition).group(1)
    assert all(scalar(db, "SELECT %s ~ %s", (tool, pattern)) for tool in TOOLS)


def test_scheduling_functions_exist_for_exactly_the_tools_with_parameters(db):
    functions = {
        row["proname"].removeprefix("backup_")
        for row in query(
            db,
            """SELECT p.proname FROM pg_proc p
                WHERE p.pronamespace = 'pggit'::regnamespace AND p.proname ~ '^backup_'
                  AND p.prorettype = 'uuid'::regtype""",
        )
    }
    assert functions == set(PARAMETERS)
    assert set(PARAMETERS) <= set(TOOLS)


def test_the_configs_tool_lists_follow_the_registry():
    # restore drills have no [tools] section of their own: they run pg_dump's and pg_basebackup's
    assert set(config.TOOL_NAMES) == set(TOOLS) - {"restore_test"}
    assert set(config.BUILTIN_TOOLS) == set(PARAMETERS)


# --- names --------------------------------------------------------------------------------------

NAMES = [
    "a",
    "main",
    "pg-main",
    "db_1.prod",
    "9lives",
    "A" * 63,
    "A" * 64,
    "_hidden",
    ".dot",
    "-dash",
    "has space",
    "slash/name",
    "semi;colon",
    "quote'd",
    "ünïcode",
    "line\nbreak",
    "",
    "trailing-",
    "x.",
]


def test_sql_and_python_accept_the_same_stanza_and_server_names(db):
    def sql_accepts(name: str) -> bool:
        try:
            scalar(db, "SELECT pggit._require_name('p_stanza', %s)", (name,))
        except psycopg2.errors.InvalidParameterValue:
            return False
        return True

    verdicts = {name: (sql_accepts(name), NAME_PATTERN.fullmatch(name) is not None) for name in NAMES}
    assert {name: sql for name, (sql, _) in verdicts.items()} == {name: py for name, (_, py) in verdicts.items()}
    assert sum(sql for sql, _ in verdicts.values()) >= 6  # the list holds accepted names too


def test_stanza_and_server_parameters_use_the_shared_name_rule(db):
    for name in NAMES:
        expected = NAME_PATTERN.fullmatch(name) is not None
        stanza = sql_params(db, "SELECT pggit.backup_pgbackrest('full', 'main', %s, '{}')", (name,))
        assert (stanza is not None) == expected == python_accepts("pgbackrest", {"stanza": name, "type": "full"}), name
        if name.lower() in RESERVED_SERVERS:
            continue  # the test below
        server = sql_params(db, "SELECT pggit.backup_barman(%s, 'main', '{}')", (name,))
        assert (server is not None) == expected == python_accepts("barman", {"server": name}), name


def test_sql_and_python_refuse_the_same_reserved_barman_servers(db):
    for name in [*RESERVED_SERVERS, "ALL", "Barman", "all1", "barmans"]:
        reserved = name.lower() in RESERVED_SERVERS
        stored = sql_params(db, "SELECT pggit.backup_barman(%s, 'main', '{}')", (name,))
        assert (stored is None) == reserved == (not python_accepts("barman", {"server": name})), name


def test_sql_and_python_accept_the_same_pg_dump_schema_names(db):
    def sql_pattern_accepts(name: str) -> bool:
        try:
            scalar(db, "SELECT pggit.backup_pg_dump('main', %s)", (name,))
        except psycopg2.errors.InvalidParameterValue as refused:
            assert refused.diag.column_name == "p_schema", refused
            # a name the pattern allows is then looked up: "no schema named ..."
            return "no schema named" in refused.diag.message_primary
        return True

    names = ["public", "pggit", "_x", "a" * 63, "a" * 64, "9a", "a-b", "a.b", "A_1", "a b", "", "é", 'a"b']
    verdicts = {name: (sql_pattern_accepts(name), SCHEMA_NAME.fullmatch(name) is not None) for name in names}
    assert {n: sql for n, (sql, _) in verdicts.items()} == {n: py for n, (_, py) in verdicts.items()}
    assert sum(sql for sql, _ in verdicts.values()) >= 4


# --- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "key"),
    [(tool, key) for tool, declared in PARAMETERS.items() for key in declared],
    ids=[f"{tool}.{key}" for tool, declared in PARAMETERS.items() for key in declared],
)
def test_sql_and_python_accept_the_same_values_of_each_tool_parameter(db, tool, key):
    agreement(db, tool, key, PARAMETERS[tool][key])


@pytest.mark.parametrize("method", sorted(COMPRESSION_LEVELS))
def test_sql_and_python_accept_the_same_pg_basebackup_compression_levels(db, method):
    agreement(db, "pg_basebackup", "compression_level", COMPRESSION_LEVELS[method], method)


BARE = {
    "pg_dump": "SELECT pggit.backup_pg_dump()",
    "pg_basebackup": "SELECT pggit.backup_pg_basebackup()",
    "pgbackrest": "SELECT pggit.backup_pgbackrest()",
    "barman": "SELECT pggit.backup_barman('pg-main')",
}


def test_defaults_the_python_parse_assumes_are_the_ones_the_sql_fills_in(db):
    assert set(BARE) == set(PARAMETERS)
    for tool, declared in PARAMETERS.items():
        stored = sql_params(db, BARE[tool], ())
        assert stored is not None and python_accepts(tool, stored), (tool, stored)
        for key, parameter in declared.items():
            if isinstance(parameter, Choice) and parameter.default is not None:
                assert stored[key] == parameter.default, (tool, key, stored)
            elif isinstance(parameter, Choice) and tool != "barman":
                assert key in stored, (tool, key, stored)  # always written: no default to agree on


def test_restore_reads_the_pg_dump_formats_of_the_registry():
    assert set(DUMP_FORMATS) == set(PARAMETERS["pg_dump"]["format"].values)


# --- the job state rule -------------------------------------------------------------------------

STATUSES = ["queued", "running", "completed", "failed", "cancelled"]


def test_job_state_rule_covers_every_status_and_attempt_count(db):
    rows = query(
        db,
        """SELECT s.status, a.attempts, pggit.backup_job_state(s.status, a.attempts, 3) AS state
             FROM unnest(%s::text[]) s (status), generate_series(0, 4) a (attempts)""",
        (STATUSES,),
    )
    expected = {
        "queued": "ready",
        "running": "in_progress",
        "completed": "completed",
        "cancelled": "cancelled",
    }
    for row in rows:
        if row["status"] == "failed":
            assert row["state"] == ("will_retry" if row["attempts"] < 3 else "permanently_failed"), row
        else:
            assert row["state"] == expected[row["status"]], row
    assert {row["state"] for row in rows} == STATES
    assert scalar(db, "SELECT pggit.backup_job_state('bogus', 0, 3)") is None


def test_no_schema_function_or_view_spells_the_retry_rule_but_the_state_function(db):
    spelled = query(
        db,
        """SELECT p.oid::regprocedure::text AS name FROM pg_proc p
            WHERE p.pronamespace = 'pggit'::regnamespace AND p.prosrc ~ %(rule)s
           UNION ALL
           SELECT c.oid::regclass::text FROM pg_class c
            WHERE c.relnamespace = 'pggit'::regnamespace AND c.relkind = 'v'
              AND pg_get_viewdef(c.oid) ~ %(rule)s""",
        {"rule": r"attempts\s*(<|>=|OPERATOR\(pg_catalog\.(<|>=)\))\s*(\w+\.)?\w*max_attempts"},
    )
    assert [row["name"] for row in spelled] == ["pggit.backup_job_state(text,integer,integer)"]


def test_queue_view_states_follow_the_rule_for_jobs_in_every_state(db):
    backups = [scalar(db, "SELECT pggit.backup_pgbackrest('full', 'main', %s)", (f"s{n}",)) for n in range(3)]
    job_ids = [scalar(db, "SELECT job_id FROM pggit.backup_jobs WHERE backup_id = %s", (b,)) for b in backups]
    claimed = query(db, "SELECT * FROM pggit.claim_backup_job('vocab-worker', ARRAY['pgbackrest'], 60)")
    assert len(claimed) == 1
    scalar(
        db,
        "SELECT pggit.fail_claimed_backup_job(%s, %s, 'retry me', true, 0, 0)",
        (claimed[0]["job_id"], claimed[0]["claim_token"]),
    )
    rows = query(
        db,
        """SELECT q.job_state, pggit.backup_job_state(j.status, j.attempts, j.max_attempts) AS rule
             FROM pggit.backup_job_queue q JOIN pggit.backup_jobs j USING (job_id)
            WHERE q.job_id = ANY (%s::uuid[])""",
        ([str(job_id) for job_id in job_ids],),
    )
    assert sorted(row["job_state"] for row in rows) == ["ready", "ready", "will_retry"]
    assert all(row["job_state"] == row["rule"] for row in rows)


def test_guides_queue_statistics_still_count_by_the_columns(db):
    scalar(db, "SELECT pggit.backup_pgbackrest('full', 'main', 'stats')")
    claimed = query(db, "SELECT * FROM pggit.claim_backup_job('vocab-worker', ARRAY['pgbackrest'], 60)")[0]
    state = scalar(
        db,
        "SELECT pggit.fail_claimed_backup_job(%s, %s, 'no space', false, 0, 0)",
        (claimed["job_id"], claimed["claim_token"]),
    )
    assert state == "permanently_failed"
    row = query(
        db,
        """SELECT COUNT(*) FILTER (WHERE status = 'failed' AND attempts < max_attempts) AS retrying,
                  COUNT(*) FILTER (WHERE status = 'failed' AND attempts >= max_attempts) AS permanently_failed
             FROM pggit.backup_jobs""",
    )[0]
    assert row == {"retrying": 0, "permanently_failed": 1}
    assert scalar(db, "SELECT job_state FROM pggit.backup_job_queue WHERE job_id = %s", (claimed["job_id"],)) == state
