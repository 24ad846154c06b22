-- 007: roles and grants. The original granted EXECUTE to PUBLIC, so anyone who could connect
-- could run commands as the database's OS user. Here PUBLIC gets nothing; four NOLOGIN roles
-- carry the rights, to be granted to login roles:
--   pggit_backup_reader    the views and tables, list_backups, get_backup_info
--   pggit_backup_operator  reader + schedule built-in backups, cancel / reset / reprioritise jobs
--   pggit_backup_worker    reader + claim, heartbeat, complete, fail, release, rescue (the supervisor's login)
--   pggit_backup_admin     all of it, custom commands (enqueue_backup_job), register_backup, deletes
-- Functions that write on behalf of a weaker role are SECURITY DEFINER with a pinned search_path.

DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['pggit_backup_reader', 'pggit_backup_operator',
                                  'pggit_backup_worker', 'pggit_backup_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        END IF;
    END LOOP;
END
$$;

DO $$
BEGIN
    -- membership grants; re-granting an existing membership only raises a NOTICE
    IF NOT pg_has_role('pggit_backup_operator', 'pggit_backup_reader', 'MEMBER') THEN
        GRANT pggit_backup_reader TO pggit_backup_operator;
    END IF;
    IF NOT pg_has_role('pggit_backup_worker', 'pggit_backup_reader', 'MEMBER') THEN
        GRANT pggit_backup_reader TO pggit_backup_worker;
    END IF;
    IF NOT pg_has_role('pggit_backup_admin', 'pggit_backup_operator', 'MEMBER') THEN
        GRANT pggit_backup_operator TO pggit_backup_admin;
    END IF;
    IF NOT pg_has_role('pggit_backup_admin', 'pggit_backup_worker', 'MEMBER') THEN
        GRANT pggit_backup_worker TO pggit_backup_admin;
    END IF;
END
$$;

-- A real pgGit install keeps its own grants on its schema and tables: only what this module
-- created (marked by a comment in 000/001) is closed to PUBLIC.
DO $$
BEGIN
    IF obj_description('pggit'::regnamespace, 'pg_namespace') = 'pgGit (created by pggit-supervisor)' THEN
        REVOKE ALL ON SCHEMA pggit FROM PUBLIC;
    END IF;
    IF obj_description('pggit.branches'::regclass, 'pg_class') = 'pgGit core (created by pggit-supervisor)' THEN
        REVOKE ALL ON pggit.branches FROM PUBLIC;
    END IF;
    IF obj_description('pggit.commits'::regclass, 'pg_class') = 'pgGit core (created by pggit-supervisor)' THEN
        REVOKE ALL ON pggit.commits FROM PUBLIC;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA pggit TO pggit_backup_reader;

REVOKE ALL ON pggit.backups, pggit.backup_jobs, pggit.backup_job_queue, pggit.backup_schema_migrations FROM PUBLIC;
GRANT SELECT ON pggit.backups, pggit.backup_job_queue, pggit.branches,
                pggit.commits, pggit.backup_schema_migrations TO pggit_backup_reader;
-- every column but spec, which holds the webhook URL (possibly a secret) workers get by claiming
GRANT SELECT (job_id, backup_id, tool, command, target, status, priority, attempts, max_attempts,
              next_retry_at, last_error, output, result, metadata, locked_by, claim_token, claimed_via,
              lease_expires_at, heartbeat_at, created_by, created_at, started_at, completed_at, updated_at)
    ON pggit.backup_jobs TO pggit_backup_reader;
-- the guide's cancel / reset UPDATEs (the status trigger limits what they may do)
GRANT UPDATE (status, next_retry_at, attempts, priority) ON pggit.backup_jobs TO pggit_backup_operator;
GRANT SELECT, INSERT, UPDATE, DELETE ON pggit.backups, pggit.backup_jobs TO pggit_backup_admin;

-- Every function of this module: nothing for PUBLIC, then each role's own.
DO $$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'pggit'::regnamespace
           AND p.proname = ANY (ARRAY[
               'backup_pgbackrest', 'backup_barman', 'backup_pg_dump', 'backup_pg_basebackup',
               'enqueue_backup_job', 'get_next_backup_job', 'claim_backup_job', 'heartbeat_backup_job',
               'finish_backup_job', 'complete_backup_job', 'fail_backup_job', 'fail_claimed_backup_job',
               'release_backup_job', 'rescue_expired_backup_jobs', 'release_worker_backup_jobs',
               'register_backup', 'complete_backup', 'fail_backup', 'list_backups', 'get_backup_info',
               'abandon_backup_job',
               -- internal helpers of this module (a real pgGit's own functions are left alone)
               '_invalid', '_show', '_require_text', '_require_name', '_require_dir', '_require_options',
               '_opt_int', '_opt_bool', '_opt_enum', '_require_enum', '_require_branch_head',
               '_common_options', '_shell_quote', '_render_command', '_job_spec', '_schedule_backup',
               '_visible_options',
               '_require_worker_id', '_require_token', '_require_lease', '_claim_job', '_fail_job',
               '_backup_jobs_before_update', '_backup_jobs_after_change', '_backup_jobs_after_delete'])
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
    END LOOP;
END
$$;

GRANT EXECUTE ON FUNCTION pggit.list_backups(text, text, text, integer, integer),
                          pggit.get_backup_info(uuid),
                          -- invoker's functions that validate with these helpers
                          pggit._invalid(text, text, text), pggit._show(text),
                          pggit._require_text(text, text, text, integer, text),
                          pggit._require_enum(text, text, text[])
    TO pggit_backup_reader;

GRANT EXECUTE ON FUNCTION pggit.backup_pgbackrest(text, text, text, jsonb),
                          pggit.backup_barman(text, text, jsonb),
                          pggit.backup_pg_dump(text, text, text, text, jsonb),
                          pggit.backup_pg_basebackup(text, text, jsonb)
    TO pggit_backup_operator;

GRANT EXECUTE ON FUNCTION pggit.get_next_backup_job(text),
                          pggit.claim_backup_job(text, text[], integer),
                          pggit.heartbeat_backup_job(uuid, bigint, integer),
                          pggit.finish_backup_job(uuid, bigint, text, jsonb, jsonb),
                          pggit.complete_backup_job(uuid, text),
                          pggit.fail_backup_job(uuid, text, integer),
                          pggit.fail_claimed_backup_job(uuid, bigint, text, boolean, integer, integer, jsonb),
                          pggit.release_backup_job(uuid, bigint, text),
                          pggit.rescue_expired_backup_jobs(),
                          pggit.release_worker_backup_jobs(text, text),
                          pggit.abandon_backup_job(uuid, bigint),
                          pggit.complete_backup(uuid, bigint, bigint, text),
                          pggit.fail_backup(uuid, text)
    TO pggit_backup_worker;

GRANT EXECUTE ON FUNCTION pggit.enqueue_backup_job(uuid, text, text, integer, jsonb),
                          pggit.register_backup(text, text, text, text, text, text, boolean, jsonb)
    TO pggit_backup_admin;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (7, '007_roles')
    ON CONFLICT (version) DO NOTHING;
