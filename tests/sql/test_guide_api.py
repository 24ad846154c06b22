"""The guide's API reference, exactly: names, parameter names, defaults, return types; and every
example call the guide shows works as written."""

import pytest

from helpers.db import query, scalar

GUIDE_SIGNATURES = {
    "backup_pgbackrest": (
        "p_backup_type text DEFAULT 'full'::text, p_branch_name text DEFAULT 'main'::text, "
        "p_stanza text DEFAULT 'main'::text, p_options jsonb DEFAULT '{}'::jsonb",
        "uuid",
    ),
    "backup_barman": (
        "p_server_name text, p_branch_name text DEFAULT 'main'::text, p_options jsonb DEFAULT '{}'::jsonb",
        "uuid",
    ),
    "backup_pg_dump": (
        "p_branch_name text DEFAULT 'main'::text, p_schema text DEFAULT NULL::text, "
        "p_format text DEFAULT 'custom'::text, p_output_path text DEFAULT '/backups'::text, "
        "p_options jsonb DEFAULT '{}'::jsonb",
        "uuid",
    ),
    "backup_pg_basebackup": (
        "p_branch_name text DEFAULT 'main'::text, p_output_path text DEFAULT '/backups'::text, "
        "p_options jsonb DEFAULT '{}'::jsonb",
        "uuid",
    ),
    "enqueue_backup_job": (
        "p_backup_id uuid, p_command text, p_tool text, p_max_attempts integer DEFAULT 3, "
        "p_metadata jsonb DEFAULT '{}'::jsonb",
        "uuid",
    ),
    "get_next_backup_job": (
        "p_worker_id text DEFAULT 'default-worker'::text",
        "TABLE(job_id uuid, backup_id uuid, command text, tool text, attempts integer, metadata jsonb)",
    ),
    # the guide gives no default; the original defaults p_output to NULL (issue 13): a superset
    "complete_backup_job": ("p_job_id uuid, p_output text DEFAULT NULL::text", "boolean"),
    "fail_backup_job": ("p_job_id uuid, p_error text, p_retry_delay_seconds integer DEFAULT 300", "boolean"),
    "register_backup": (
        "p_backup_name text, p_backup_type text, p_backup_tool text, p_location text, "
        "p_commit_hash text DEFAULT NULL::text, p_branch_name text DEFAULT NULL::text, "
        "p_create_snapshot boolean DEFAULT false, p_metadata jsonb DEFAULT '{}'::jsonb",
        "uuid",
    ),
    "complete_backup": (
        "p_backup_id uuid, p_backup_size bigint DEFAULT NULL::bigint, "
        "p_compressed_size bigint DEFAULT NULL::bigint, p_compression_type text DEFAULT NULL::text",
        "boolean",
    ),
    "fail_backup": ("p_backup_id uuid, p_error_message text", "boolean"),
}


@pytest.mark.parametrize("name", sorted(GUIDE_SIGNATURES))
def test_function_has_the_guides_exact_signature(db, name):
    rows = query(
        db,
        """SELECT pg_get_function_arguments(oid) AS args, pg_get_function_result(oid) AS result
                          FROM pg_proc WHERE pronamespace = 'pggit'::regnamespace AND proname = %s""",
        (name,),
    )
    assert len(rows) == 1, f"{name} must exist exactly once (no overloads to confuse calls)"
    assert (rows[0]["args"], rows[0]["result"]) == GUIDE_SIGNATURES[name]


def test_verify_installation_query_lists_the_guides_functions(db):
    names = [
        r["proname"]
        for r in query(
            db,
            """
        SELECT proname
        FROM pg_proc
        WHERE pronamespace = (SELECT oid FROM pg_namespace WHERE nspname='pggit')
          AND proname LIKE 'backup_%'
        ORDER BY proname;""",
        )
    ]
    assert {"backup_barman", "backup_pg_dump", "backup_pgbackrest"} <= set(names)


GUIDE_CALLS = [
    (
        "pgbackrest full with options",
        """SELECT pggit.backup_pgbackrest(
        'full',                    -- backup_type: 'full', 'incr', 'diff'
        'main',                    -- branch_name
        'main',                    -- stanza name
        '{"repo": "1"}'::jsonb     -- optional parameters
    )""",
        "pgbackrest",
        {"stanza": "main", "type": "full", "repo": 1},
    ),
    (
        "pgbackrest incr",
        "SELECT pggit.backup_pgbackrest('incr', 'main', 'main')",
        "pgbackrest",
        {"stanza": "main", "type": "incr"},
    ),
    (
        "pgbackrest diff",
        "SELECT pggit.backup_pgbackrest('diff', 'main', 'main')",
        "pgbackrest",
        {"stanza": "main", "type": "diff"},
    ),
    (
        "pgbackrest cron form",
        "SELECT pggit.backup_pgbackrest('full', 'main')",
        "pgbackrest",
        {"stanza": "main", "type": "full"},
    ),
    (
        "pgbackrest api example",
        """SELECT pggit.backup_pgbackrest('full', 'main', 'prod-stanza',
        '{"repo": "1", "type": "full"}'::jsonb)""",
        "pgbackrest",
        {"stanza": "prod-stanza", "type": "full", "repo": 1},
    ),
    (
        "barman",
        """SELECT pggit.backup_barman(
        'prod-server',                   -- server name from Barman config
        'main',                          -- branch_name
        '{"wait": true}'::jsonb          -- optional parameters
    )""",
        "barman",
        {"server": "prod-server", "wait": True},
    ),
    (
        "barman api example",
        """SELECT pggit.backup_barman('prod-db', 'main',
        '{"wait": true, "reuse-backup": "incremental"}'::jsonb)""",
        "barman",
        {"server": "prod-db", "wait": True, "reuse_backup": "link"},
    ),
    (
        "pg_dump schema",
        """SELECT pggit.backup_pg_dump(
        'main',                  -- branch_name
        'public',                -- schema to dump (NULL for all)
        'custom',                -- format: 'custom', 'tar', 'plain'
        '/backups',              -- output directory
        '{"compression_level": "9"}'::jsonb  -- optional parameters
    )""",
        "pg_dump",
        {"schema": "public", "format": "custom", "output_dir": "/backups", "compression_level": 9},
    ),
    (
        "pg_dump whole database",
        "SELECT pggit.backup_pg_dump('main', NULL, 'custom', '/backups')",
        "pg_dump",
        {"format": "custom", "output_dir": "/backups"},
    ),
    (
        "pg_dump weekly",
        "SELECT pggit.backup_pg_dump('main', NULL, 'custom', '/backups/weekly')",
        "pg_dump",
        {"format": "custom", "output_dir": "/backups/weekly"},
    ),
    (
        "pg_dump migration form",
        "SELECT pggit.backup_pg_dump('main')",
        "pg_dump",
        {"format": "custom", "output_dir": "/backups"},
    ),
    (
        "pg_dump api example",
        """SELECT pggit.backup_pg_dump('main', 'public', 'custom', '/backups/daily',
        '{"compression_level": "9", "jobs": "4"}'::jsonb)""",
        "pg_dump",
        {"schema": "public", "format": "custom", "output_dir": "/backups/daily", "compression_level": 9, "jobs": 4},
    ),
    (
        "webhook notifications",
        """SELECT pggit.backup_pgbackrest('full', 'main', 'main',
        jsonb_build_object(
            'webhook_url', 'https://hooks.slack.com/...',
            'notify_on_success', true,
            'notify_on_failure', true
        ))""",
        "pgbackrest",
        {"stanza": "main", "type": "full"},
    ),
    (
        "pg_basebackup defaults",
        "SELECT pggit.backup_pg_basebackup()",
        "pg_basebackup",
        {"output_dir": "/backups", "format": "plain", "checkpoint": "fast", "compression": "none"},
    ),
]


@pytest.mark.parametrize("sql,tool,params", [c[1:] for c in GUIDE_CALLS], ids=[c[0] for c in GUIDE_CALLS])
def test_guide_call_queues_one_backup_and_one_ready_job(db, sql, tool, params):
    backup_id = scalar(db, sql)
    rows = query(
        db,
        """SELECT j.tool, j.spec, q.job_state, b.status AS backup_status, b.commit_hash, h.head_commit_hash
                          FROM pggit.backup_jobs j JOIN pggit.backup_job_queue q USING (job_id)
                          JOIN pggit.backups b ON b.backup_id = j.backup_id
                          JOIN pggit.branches h ON h.name = b.branch_name
                         WHERE j.backup_id = %s""",
        (backup_id,),
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["tool"] == tool and row["spec"]["tool"] == tool
    if tool == "pg_dump":
        params = {**params, "database": scalar(db, "SELECT current_database()")}
    assert row["spec"]["params"] == params
    assert row["job_state"] == "ready" and row["backup_status"] == "in_progress"
    assert row["commit_hash"] == row["head_commit_hash"], "a backup is linked to its branch's head commit"


def test_webhook_options_reach_the_job_spec(db):
    backup_id = scalar(
        db,
        """SELECT pggit.backup_pgbackrest('full', 'main', 'main',
        jsonb_build_object('webhook_url', 'https://hooks.slack.com/x', 'notify_on_success', true,
                           'notify_on_failure', true))""",
    )
    spec = scalar(db, "SELECT spec FROM pggit.backup_jobs WHERE backup_id = %s", (backup_id,))
    assert spec["notify"] == {"webhook_url": "https://hooks.slack.com/x", "on_success": True, "on_failure": True}


def test_custom_backup_flow_registers_and_enqueues(db):
    db.cursor().execute("""
        SELECT pggit.register_backup(
            'custom-backup-001',
            'full',
            'custom',
            's3://bucket/custom-001',
            (SELECT head_commit_hash FROM pggit.branches WHERE name = 'main')
        ) AS backup_id""")
    backup_id = scalar(db, "SELECT backup_id FROM pggit.backups WHERE backup_name = 'custom-backup-001'")
    job_id = scalar(
        db,
        """SELECT pggit.enqueue_backup_job(
            %s::UUID,
            'my-custom-backup-script.sh --output /backups',
            'custom',
            5,  -- 5 retry attempts
            '{"script": "custom", "notify": "admin@example.com"}'::jsonb
        )""",
        (backup_id,),
    )
    row = query(db, "SELECT * FROM pggit.backup_jobs WHERE job_id = %s", (job_id,))[0]
    assert row["max_attempts"] == 5 and row["tool"] == "custom" and row["target"] is None
    assert row["spec"]["params"] == {"command": "my-custom-backup-script.sh --output /backups"}
    assert row["metadata"] == {"script": "custom", "notify": "admin@example.com"}
    assert row["command"] == "my-custom-backup-script.sh --output /backups"


def test_command_column_is_a_rendering_and_targets_group_by_stanza_server_database(db):
    db.cursor().execute("SELECT pggit.backup_pgbackrest('full', 'main', 'main', '{\"repo\": 2}')")
    db.cursor().execute("SELECT pggit.backup_barman('pg-prod')")
    db.cursor().execute("SELECT pggit.backup_pg_dump('main', 'public', 'directory', '/backups', '{\"jobs\": 4}')")
    rows = {r["tool"]: r for r in query(db, "SELECT tool, command, target FROM pggit.backup_jobs")}
    dbname = scalar(db, "SELECT current_database()")
    assert rows["pgbackrest"]["command"] == "pgbackrest --stanza=main --type=full --repo=2 --start-fast backup"
    assert rows["pgbackrest"]["target"] == "pgbackrest:main"
    assert rows["barman"]["command"] == "barman backup --wait pg-prod" and rows["barman"]["target"] == "barman:pg-prod"
    assert "--jobs=4" in rows["pg_dump"]["command"] and rows["pg_dump"]["target"] == f"pg_dump:{dbname}:public"


def test_custom_format_jobs_are_kept_with_a_notice(db):
    db.notices.clear()
    scalar(db, "SELECT pggit.backup_pg_dump('main', NULL, 'custom', '/backups', '{\"jobs\": \"4\"}')")
    assert any("parallel restore" in n for n in db.notices)
    assert "--jobs" not in scalar(db, "SELECT command FROM pggit.backup_jobs")


def test_list_backups_by_name_and_filters(db):
    first = scalar(db, "SELECT pggit.backup_pg_dump('main')")
    second = scalar(db, "SELECT pggit.backup_pgbackrest('full', 'main')")
    rows = query(db, "SELECT * FROM pggit.list_backups(p_limit := 20, p_offset := 0)")
    assert [r["backup_id"] for r in rows] == [second, first]
    assert len(query(db, "SELECT * FROM pggit.list_backups(p_limit := 1, p_offset := 1)")) == 1
    head = scalar(db, "SELECT head_commit_hash FROM pggit.branches WHERE name = 'main'")
    assert (
        len(query(db, "SELECT * FROM pggit.list_backups(p_branch_name := 'main', p_commit_hash := %s)", (head,))) == 2
    )
    assert query(db, "SELECT * FROM pggit.list_backups(p_status := 'completed')") == []
    db.cursor().execute("INSERT INTO pggit.branches (name) VALUES ('dev')")
    assert query(db, "SELECT * FROM pggit.list_backups(p_branch_name := 'dev')") == []


def test_get_backup_info_shows_the_backup_and_its_jobs(db):
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main')")
    rows = query(db, "SELECT * FROM pggit.get_backup_info(%s)", (str(backup_id),))
    assert len(rows) == 1 and rows[0]["backup_tool"] == "pg_dump"
    assert [j["job_state"] for j in rows[0]["jobs"]] == ["ready"]


def test_get_backup_info_of_an_unknown_id_raises_no_data_found(db):
    import psycopg2

    with pytest.raises(psycopg2.Error) as exc:
        scalar(db, "SELECT * FROM pggit.get_backup_info('00000000-0000-0000-0000-000000000000')")
    assert exc.value.pgcode == "P0002"


def test_register_backup_with_a_branch_uses_its_head_and_snapshot_is_recorded(db):
    backup_id = scalar(
        db,
        """SELECT pggit.register_backup('nightly-1', 'snapshot', 'custom', '/backups/x',
                                  p_branch_name := 'main', p_create_snapshot := true)""",
    )
    row = query(db, "SELECT * FROM pggit.backups WHERE backup_id = %s", (backup_id,))[0]
    assert row["commit_hash"] == scalar(db, "SELECT head_commit_hash FROM pggit.branches WHERE name = 'main'")
    assert row["metadata"]["snapshot_requested"] is True


def test_complete_backup_and_fail_backup_follow_the_guide(db):
    first = scalar(db, "SELECT pggit.register_backup('a', 'full', 'custom', '/x', p_branch_name := 'main')")
    assert scalar(db, "SELECT pggit.complete_backup(%s, 1000, 400, 'zstd')", (first,)) is True
    row = query(db, "SELECT * FROM pggit.backups WHERE backup_id = %s", (first,))[0]
    assert (row["status"], row["backup_size"], row["compressed_size"], row["compression_type"]) == (
        "completed",
        1000,
        400,
        "zstd",
    )
    assert scalar(db, "SELECT pggit.fail_backup(%s, 'late failure')", (first,)) is False, (
        "a completed backup never flips"
    )
    assert scalar(db, "SELECT status FROM pggit.backups WHERE backup_id = %s", (first,)) == "completed"
    second = scalar(db, "SELECT pggit.register_backup('b', 'full', 'custom', '/x', p_branch_name := 'main')")
    assert scalar(db, "SELECT pggit.fail_backup(%s, 'disk full')", (second,)) is True
    assert query(db, "SELECT status, error_message FROM pggit.backups WHERE backup_id = %s", (second,))[0] == {
        "status": "failed",
        "error_message": "disk full",
    }


def test_complete_backup_job_with_the_job_id_alone_completes_the_guides_claim(db):
    # the original defaults p_output to NULL; its listener calls complete_backup_job(job_id)
    backup_id = scalar(db, "SELECT pggit.backup_pg_dump('main')")
    job = query(db, "SELECT * FROM pggit.get_next_backup_job('worker-01')")[0]
    assert scalar(db, "SELECT pggit.complete_backup_job(%s)", (job["job_id"],)) is True
    assert query(db, "SELECT status, output FROM pggit.backup_jobs WHERE job_id = %s", (job["job_id"],))[0] == {
        "status": "completed",
        "output": None,
    }
    assert scalar(db, "SELECT status FROM pggit.backups WHERE backup_id = %s", (backup_id,)) == "completed"
