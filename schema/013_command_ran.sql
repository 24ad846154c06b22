-- 013: the command people see is the command that ran. `command` is rendered by the SQL when a
-- job is scheduled, from what was asked; the tool's real argv can differ (pg_basebackup's
-- --compress=client-gzip:5, pg_dump's --snapshot=..., Barman's --reuse-backup dropped for a
-- server that does not copy with rsync). When a worker starts the tool it records the exact
-- argv, shell-quoted for reading, with pggit.record_job_command; pggit.backup_job_queue then
-- shows it in `command`, and `command_source` says which one `command` is:
--   'requested'  no tool of this job has started yet: what the scheduling function rendered
--   'ran'        the argv of the tool the latest attempt started (requested_command keeps the other)
-- pggit.backup_jobs.command itself never changes (it is what the job is); the argv goes to the
-- new column ran_command. A retry's tool replaces the previous attempt's when it starts. A
-- restore drill records its main command: the copy of the backup into the drill's sandbox
-- (its initdb, pg_ctl and pg_restore follow from the job; one that fails is named in its error).
-- pggit.get_backup_info's jobs say the same (command, command_source).

ALTER TABLE pggit.backup_jobs ADD COLUMN IF NOT EXISTS ran_command text;
ALTER TABLE pggit.backup_jobs ADD COLUMN IF NOT EXISTS ran_command_at timestamptz;
COMMENT ON COLUMN pggit.backup_jobs.ran_command IS
    'the exact argv of the tool the latest attempt started, shell-quoted (NULL until a tool started); command is what was requested';
COMMENT ON COLUMN pggit.backup_jobs.ran_command_at IS
    'when the worker recorded ran_command';
GRANT SELECT (ran_command, ran_command_at) ON pggit.backup_jobs TO pggit_backup_reader;

-- What a DBA reads (psql, `pggit-supervisor`: a command that ran, a schedule's definition, a
-- slot's detail) carries no line break or terminal escape: true when p_text holds a C0 or C1
-- control character.
CREATE OR REPLACE FUNCTION pggit._has_control_character(p_text text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p_text ~ '[\x01-\x1f\x7f-\x9f]'
$$;
REVOKE ALL ON FUNCTION pggit._has_control_character(text) FROM PUBLIC;

-- Records the command a claim's tool runs. False means the job is no longer this claim's
-- (cancelled, rescued, deleted, or never this login's), as heartbeat_backup_job says: nothing
-- changes. The same guarded UPDATE as every claimed-job function (009): job, state, token hash
-- and login together.
CREATE OR REPLACE FUNCTION pggit.record_job_command(
    p_job_id      uuid,
    p_claim_token text,
    p_command     text
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
DECLARE
    v_hash bytea := pggit._token_hash(p_claim_token);
BEGIN
    IF p_command IS NULL OR p_command = '' THEN
        PERFORM pggit._invalid('p_command', 'must be the shell-quoted argv of the tool that started',
                               'pass the argv joined for reading, e.g. ''/usr/bin/pg_dump --format=custom ...''');
    END IF;
    PERFORM pggit._require_size('p_command', octet_length(p_command), 16384,
        'at most 16 KiB: a command line, not a script');
    -- a DBA reads it in psql or `pggit-supervisor`: no line break or terminal escape (C0, C1)
    IF pggit._has_control_character(p_command) THEN
        PERFORM pggit._invalid('p_command', 'contains a control character',
            'one printable line: write an argument holding one with ANSI-C quoting ($''a\nb'')');
    END IF;
    UPDATE pggit.backup_jobs j
       SET ran_command = p_command, ran_command_at = now()
     WHERE j.job_id = p_job_id AND j.status = 'running'
       AND j.claim_secret_sha256 = v_hash AND j.claimed_by = session_user;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION pggit.record_job_command(uuid, text, text) IS
    'records on a claimed, running job the shell-quoted argv its worker has just started; false if the claim is not the caller''s';
REVOKE ALL ON FUNCTION pggit.record_job_command(uuid, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.record_job_command(uuid, text, text) TO pggit_backup_worker;

-- 012's view with `command` now the command that ran once a tool started, and two columns
-- added at the end (the guide's columns keep their names, order and meaning).
CREATE OR REPLACE VIEW pggit.backup_job_queue AS
SELECT j.job_id,
       j.backup_id,
       b.backup_name,
       j.tool,
       j.status,
       pggit.backup_job_state(j.status, j.attempts, j.max_attempts) AS job_state,
       j.priority,
       j.attempts,
       j.max_attempts,
       j.next_retry_at,
       j.locked_by AS worker_id,
       j.lease_expires_at,
       j.created_at,
       j.started_at,
       j.completed_at,
       j.last_error,
       coalesce(j.ran_command, j.command) AS command,
       j.target,
       b.status AS backup_status,
       b.branch_name,
       b.commit_hash,
       CASE WHEN j.ran_command IS NULL THEN 'requested' ELSE 'ran' END AS command_source,
       j.command AS requested_command
  FROM pggit.backup_jobs j
  JOIN pggit.backups b ON b.backup_id = j.backup_id;
COMMENT ON COLUMN pggit.backup_job_queue.command IS
    'the command the latest attempt ran (command_source = ''ran''), or until a tool started the requested one (''requested'')';
COMMENT ON COLUMN pggit.backup_job_queue.command_source IS
    'which command `command` shows: ''requested'' (rendered when the job was scheduled) or ''ran'' (the exact argv a worker started)';
COMMENT ON COLUMN pggit.backup_job_queue.requested_command IS
    'the command rendered when the job was scheduled, from what was asked';

-- 006's get_backup_info, its jobs saying which command they show, as the view does.
CREATE OR REPLACE FUNCTION pggit.get_backup_info(p_backup_id UUID)
RETURNS TABLE (
    backup_id        uuid,
    backup_name      text,
    backup_type      text,
    backup_tool      text,
    status           text,
    branch_name      text,
    commit_hash      text,
    location         text,
    backup_size      bigint,
    compressed_size  bigint,
    compression_type text,
    checksum         text,
    error_message    text,
    metadata         jsonb,
    created_at       timestamptz,
    started_at       timestamptz,
    completed_at     timestamptz,
    jobs             jsonb
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pggit.backups b WHERE b.backup_id = p_backup_id) THEN
        RAISE EXCEPTION 'pggit: no backup with id %', coalesce(p_backup_id::text, 'NULL')
            USING ERRCODE = 'P0002', HINT = 'SELECT backup_id FROM pggit.list_backups() lists the known backups';
    END IF;
    RETURN QUERY
        SELECT b.backup_id, b.backup_name, b.backup_type, b.backup_tool, b.status, b.branch_name,
               b.commit_hash, b.location, b.backup_size, b.compressed_size, b.compression_type,
               b.checksum, b.error_message, b.metadata, b.created_at, b.started_at, b.completed_at,
               coalesce((SELECT jsonb_agg(jsonb_build_object(
                            'job_id', q.job_id, 'tool', q.tool, 'status', q.status, 'job_state', q.job_state,
                            'attempts', q.attempts, 'max_attempts', q.max_attempts, 'worker_id', q.worker_id,
                            'command', q.command, 'command_source', q.command_source,
                            'last_error', q.last_error, 'next_retry_at', q.next_retry_at,
                            'started_at', q.started_at, 'completed_at', q.completed_at) ORDER BY q.created_at)
                           FROM pggit.backup_job_queue q WHERE q.backup_id = b.backup_id), '[]'::jsonb)
          FROM pggit.backups b
         WHERE b.backup_id = p_backup_id;
END
$$;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (13, '013_command_ran')
    ON CONFLICT (version) DO NOTHING;
