-- 011: what the adversarial review of 009/010 found. Every SECURITY DEFINER function that is
-- not a queue function runs with pggit.queue_internal = 'off' (anyone may SET the marker; only
-- code running as the table owner passes, and these functions do), so a caller's marker never
-- switches the triggers' checks off inside them; the jobs' DELETE guard has no marker bypass at
-- all (no queue function deletes jobs, and an FK cascade runs as the owner). Jobs are inserted
-- only by the scheduling functions, backups only by register_backup and the scheduling
-- functions: a hand INSERT is refused whatever the marker. A backup has at most one job that
-- decides its outcome (a unique index: no marker can make two). A worker's location is checked
-- per tool, option strings are bounded before any regex, a claim made before 009 (claimed_by
-- NULL) records sizes only for an admin, and "never changes" compares jsonb as text.
-- The install preflight (schema/preflight.sql, run every time) is the other half of this step.

-- ---------------------------------------------------------------------------------------------
-- "never changes" means the same text: jsonb equality says 9 = 9.000 and would let a spec's
-- numbers be rewritten in a form the worker may read differently.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pggit._changed_columns(p_old jsonb, p_new jsonb, p_columns text[], p_except text[])
RETURNS text[] LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT coalesce(array_agg(n.key ORDER BY n.key), '{}')
      FROM jsonb_each(p_new) n
     WHERE (p_columns IS NULL OR n.key = ANY (p_columns))
       AND NOT (n.key = ANY (coalesce(p_except, '{}')))
       AND n.value::text IS DISTINCT FROM (p_old -> n.key)::text
$$;

-- A job enters the queue through the scheduling functions only (backup_*, enqueue_backup_job,
-- schedule_restore_test), which run as the table's owner and build a job whose command, spec,
-- target and backup agree: a hand INSERT (by any other role, whatever the marker) could pair a
-- pgBackRest spec with no target, or a drill's spec with another backup. It enters as queued,
-- never run, unclaimed; one job decides a backup's outcome, so a backup in progress takes one
-- (restore drills aside, which need a completed backup; the unique index below makes it an
-- invariant). The backup row is locked so that two inserts, or an insert and
-- pggit.complete_backup, serialise. The table's owner (a superuser) may still insert by hand, as
-- the tests do to forge jobs (tests/queue_helpers.py says how): that is not a role to grant.
CREATE OR REPLACE FUNCTION pggit._backup_jobs_before_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    c_unclaimed constant text[] := ARRAY['claimed_by', 'claim_secret_sha256', 'claimed_via', 'locked_by',
                                         'lease_expires_at', 'heartbeat_at', 'started_at', 'completed_at', 'output',
                                         'last_error', 'next_retry_at'];
    c_hint      constant text := 'queue work with pggit.backup_pg_dump / backup_pgbackrest / backup_barman / '
                                 'backup_pg_basebackup, pggit.enqueue_backup_job (custom commands) or pggit.schedule_restore_test';
    v_new     jsonb := to_jsonb(NEW);
    v_set     text[];
    v_status  text;
BEGIN
    IF coalesce(current_setting('pggit.queue_internal', true), '') = 'on'
       AND (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
           = (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user) THEN
        RETURN NEW;
    END IF;
    IF (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
       IS DISTINCT FROM (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'backup job: jobs are enqueued by the scheduling functions, not by INSERT (refused for %)', current_user
            USING ERRCODE = '42501', HINT = c_hint;
    END IF;
    v_set := pggit._set_columns(v_new, c_unclaimed);
    IF coalesce(v_new ->> 'claim_token', '0') NOT IN ('0', '') THEN
        v_set := v_set || 'claim_token'::text;
    END IF;
    IF NEW.result IS DISTINCT FROM '{}'::jsonb THEN
        v_set := v_set || 'result'::text;
    END IF;
    IF NEW.status IS DISTINCT FROM 'queued' OR NEW.attempts IS DISTINCT FROM 0 OR cardinality(v_set) > 0 THEN
        RAISE EXCEPTION 'backup job: a job is enqueued as queued, with attempts 0 and no claim or result (got status %, attempts %; %)',
                coalesce(NEW.status, 'NULL'), coalesce(NEW.attempts::text, 'NULL'),
                CASE WHEN cardinality(v_set) > 0 THEN 'set: ' || array_to_string(v_set, ', ') ELSE 'nothing else set' END
            USING ERRCODE = '55000', HINT = c_hint;
    END IF;
    IF NEW.created_by IS DISTINCT FROM session_user::text THEN
        RAISE EXCEPTION 'backup job: created_by is the login that enqueues it (%), not %', session_user, coalesce(NEW.created_by, 'NULL')
            USING ERRCODE = '55000', HINT = 'leave created_by out';
    END IF;
    SELECT b.status INTO v_status FROM pggit.backups b WHERE b.backup_id = NEW.backup_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NEW;  -- the foreign key reports it
    END IF;
    IF NEW.tool = 'restore_test' THEN
        IF v_status <> 'completed' THEN
            RAISE EXCEPTION 'backup job: backup % is %, and only a completed backup can be restore-tested', NEW.backup_id, v_status
                USING ERRCODE = '55000', HINT = 'SELECT pggit.schedule_restore_test(backup_id) for a completed backup';
        END IF;
    ELSIF v_status <> 'in_progress' THEN
        RAISE EXCEPTION 'backup job: backup % is already %', NEW.backup_id, v_status
            USING ERRCODE = '55000', HINT = 'register a new backup for a new run (pggit.register_backup)';
    ELSIF EXISTS (SELECT 1 FROM pggit.backup_jobs j WHERE j.backup_id = NEW.backup_id AND j.tool <> 'restore_test') THEN
        RAISE EXCEPTION 'backup job: backup % already has a job', NEW.backup_id
            USING ERRCODE = '55000', HINT = 'one job decides a backup''s outcome: register a new backup for another command';
    END IF;
    RETURN NEW;
END
$$;

-- A job that holds a lease (running, or cancelled while its worker still stops the tool) holds
-- its target: deleting it would let a second backup of the same stanza or server start beside
-- the first. Cancel first; delete once the worker let go (or rescue_expired_backup_jobs freed it).
-- A restore drill's target is its own backup, which nothing else backs up: a drill may go (its
-- worker stops at the next heartbeat and removes its scratch copy), so the guide's retention
-- DELETE of completed backups works even while one of them is being restore-tested.
CREATE OR REPLACE FUNCTION pggit._backup_jobs_before_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    -- no marker bypass: no queue function deletes jobs, and a DELETE of the backup reaches here
    -- through the foreign key's cascade, which runs as the table's owner
    IF OLD.lease_expires_at IS NOT NULL AND OLD.tool <> 'restore_test' THEN
        RAISE EXCEPTION 'backup job % of backup % is % and its worker % still holds it: it cannot be deleted now',
                OLD.job_id, OLD.backup_id, OLD.status, coalesce(OLD.locked_by, '?')
            USING ERRCODE = '55000',
                  HINT = 'cancel it first (UPDATE pggit.backup_jobs SET status = ''cancelled'' WHERE job_id = ...); '
                      || 'once its worker has stopped the tool (lease_expires_at is NULL, at the latest at '
                      || OLD.lease_expires_at || ' and the next rescue) it can be deleted';
    END IF;
    RETURN OLD;
END
$$;


-- A backup row is a record. By hand it may be renamed (backup_name is a label, under
-- register_backup's rule: it reaches pg_basebackup's --label, environment variables, webhooks and
-- logs) or deleted (the guide's retention); every other column is a fact, written by the job or,
-- for a backup registered by hand, by pggit.complete_backup / fail_backup. A backup is inserted
-- only by register_backup and the scheduling functions (running as the table's owner), which
-- validate its name, branch, location and metadata: a hand INSERT by any other role is refused.
CREATE OR REPLACE FUNCTION pggit._backups_before_write() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    c_facts constant text[] := ARRAY['backup_size', 'compressed_size', 'compression_type', 'checksum', 'error_message',
                                     'started_at', 'completed_at', 'verified_at', 'restore_tested_at', 'restore_test_result'];
    v_changed text[];
    v_job     record;
BEGIN
    IF coalesce(current_setting('pggit.queue_internal', true), '') = 'on'
       AND (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
           = (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user) THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' AND (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
       IS DISTINCT FROM (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'backup: backups are registered with pggit.register_backup, not by INSERT (refused for %)', current_user
            USING ERRCODE = '42501',
                  HINT = 'SELECT pggit.register_backup(name, type, tool, location, ...) validates the name, branch, location and metadata';
    END IF;
    IF TG_OP = 'INSERT' THEN
        v_changed := pggit._set_columns(to_jsonb(NEW), c_facts);
        IF NEW.status IS DISTINCT FROM 'in_progress' OR cardinality(v_changed) > 0 THEN
            RAISE EXCEPTION 'backup: a backup is registered in progress, without facts (got status %; %)',
                    coalesce(NEW.status, 'NULL'),
                    CASE WHEN cardinality(v_changed) > 0 THEN 'set: ' || array_to_string(v_changed, ', ') ELSE 'no facts set' END
                USING ERRCODE = '55000',
                      HINT = 'SELECT pggit.register_backup(...), then pggit.complete_backup(backup_id, ...) or fail_backup when it ended';
        END IF;
        IF NEW.created_by IS DISTINCT FROM session_user::text THEN
            RAISE EXCEPTION 'backup: created_by is the login that registers it (%), not %', session_user, coalesce(NEW.created_by, 'NULL')
                USING ERRCODE = '55000', HINT = 'leave created_by out';
        END IF;
        RETURN NEW;
    END IF;

    IF NEW.backup_name IS DISTINCT FROM OLD.backup_name THEN
        PERFORM pggit._require_text('backup_name', NEW.backup_name, '^[A-Za-z0-9][A-Za-z0-9_.:@+-]*$', 200,
            'a name of 1-200 characters: letters, digits, _ . : @ + - (as pggit.register_backup takes it)');
    END IF;
    v_changed := pggit._changed_columns(to_jsonb(OLD), to_jsonb(NEW), NULL, ARRAY['backup_name']);
    IF cardinality(v_changed) = 0 THEN
        RETURN NEW;
    END IF;
    SELECT j.job_id, j.status, (j.status IN ('queued', 'running') OR j.status = 'failed' AND j.attempts < j.max_attempts) AS in_play
      INTO v_job
      FROM pggit.backup_jobs j
     WHERE j.backup_id = OLD.backup_id AND j.tool <> 'restore_test'
     ORDER BY j.created_at DESC LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'backup %: % changes only through its job % (%), not by hand',
                OLD.backup_id, array_to_string(v_changed, ', '), v_job.job_id, v_job.status
            USING ERRCODE = '55000',
                  HINT = CASE WHEN v_job.in_play
                              THEN 'workers record a backup with pggit.finish_backup_job or complete_backup_job; to stop it: '
                                   || 'UPDATE pggit.backup_jobs SET status = ''cancelled'' WHERE job_id = ''' || v_job.job_id || ''''
                              ELSE 'its job has ended and recorded the outcome (see pggit.backup_jobs); by hand only backup_name '
                                   || 'may change, and DELETE removes the backup' END;
    END IF;
    RAISE EXCEPTION 'backup %: % is a recorded fact and does not change by hand', OLD.backup_id, array_to_string(v_changed, ', ')
        USING ERRCODE = '55000',
              HINT = CASE WHEN OLD.status = 'in_progress'
                          THEN 'a backup registered by hand ends with pggit.complete_backup(backup_id, size, compressed_size, compression) '
                               || 'or pggit.fail_backup(backup_id, error)'
                          ELSE 'only backup_name may be changed by hand; DELETE removes a backup' END;
END
$$;

-- The guide's completion. For a backup registered by hand without a job (admin): completes it.
-- For a backup whose job has completed (the original listener's second call, after
-- complete_backup_job): records sizes and compression type once, leaving the status alone; the
-- worker role may do this, but only the login that claimed the job the guide's way. A backup
-- whose job is queued, running or waiting for a retry changes only through that job.
CREATE OR REPLACE FUNCTION pggit.complete_backup(
    p_backup_id        UUID,
    p_backup_size      BIGINT DEFAULT NULL,
    p_compressed_size  BIGINT DEFAULT NULL,
    p_compression_type TEXT   DEFAULT NULL
) RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
DECLARE
    v_backup pggit.backups;
    v_job    pggit.backup_jobs;
    v_admin  boolean := pg_has_role(session_user, 'pggit_backup_admin', 'MEMBER');
BEGIN
    IF p_backup_size < 0 THEN
        PERFORM pggit._invalid('p_backup_size', format('%s is negative', p_backup_size), 'bytes, 0 or more, or NULL');
    END IF;
    IF p_compressed_size < 0 THEN
        PERFORM pggit._invalid('p_compressed_size', format('%s is negative', p_compressed_size), 'bytes, 0 or more, or NULL');
    END IF;
    IF p_compression_type IS NOT NULL THEN
        PERFORM pggit._require_text('p_compression_type', p_compression_type, '^[A-Za-z0-9_.:+-]+$', 64,
            'a compression name such as gzip, lz4, zstd or none');
    END IF;
    -- locked first, so that a job enqueued meanwhile is seen by the statements below
    SELECT * INTO v_backup FROM pggit.backups b WHERE b.backup_id = p_backup_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pggit._invalid('p_backup_id', format('no backup with id %s', coalesce(p_backup_id::text, 'NULL')),
            'SELECT backup_id, status FROM pggit.list_backups() lists the known backups');
    END IF;
    v_job := pggit._backup_job_of(p_backup_id);

    IF v_job.job_id IS NOT NULL AND v_job.status = 'completed' AND v_backup.status = 'completed' THEN
        -- claimed_by is NULL only for a job claimed before 009 recorded the claim's login: nobody
        -- knows which login that was, so only an admin records its sizes
        IF NOT v_admin AND NOT coalesce(v_job.claimed_via = 'guide' AND v_job.claimed_by = session_user::text, false) THEN
            RAISE EXCEPTION 'pggit: backup % was completed by its job %, which login % did not claim with get_next_backup_job',
                    p_backup_id, v_job.job_id, session_user
                USING ERRCODE = '42501',
                      HINT = 'only the login that claimed and completed the job (or pggit_backup_admin) records its sizes';
        END IF;
        IF num_nonnulls(v_backup.backup_size, v_backup.compressed_size, v_backup.compression_type) > 0
           OR v_backup.metadata ? 'sizes_recorded_by' THEN
            RAISE EXCEPTION 'pggit: backup % is completed and its sizes are already recorded (backup_size %, compressed_size %, compression_type %)',
                    p_backup_id, coalesce(v_backup.backup_size::text, 'NULL'), coalesce(v_backup.compressed_size::text, 'NULL'),
                    coalesce(v_backup.compression_type, 'NULL')
                USING ERRCODE = '55000',
                      HINT = 'a backup''s facts are recorded once; SELECT * FROM pggit.get_backup_info(backup_id) shows them';
        END IF;
        UPDATE pggit.backups b
           SET backup_size = p_backup_size, compressed_size = p_compressed_size, compression_type = p_compression_type,
               metadata = b.metadata || jsonb_build_object('sizes_recorded_by', jsonb_build_object(
                   'login', session_user, 'at', now(), 'function', 'complete_backup'))
         WHERE b.backup_id = p_backup_id;
        RETURN true;
    END IF;
    IF v_job.job_id IS NOT NULL THEN
        PERFORM pggit._refuse_backup_with_job('pggit.complete_backup', v_backup, v_job);
    END IF;
    IF v_backup.status <> 'in_progress' THEN
        RAISE EXCEPTION 'pggit: backup % is %, not in progress', p_backup_id, v_backup.status
            USING ERRCODE = '55000',
                  HINT = 'only a backup in progress can be completed; register a new backup for a new run';
    END IF;
    IF NOT v_admin THEN
        RAISE EXCEPTION 'pggit: backup % was registered by hand: only pggit_backup_admin completes it', p_backup_id
            USING ERRCODE = '42501', HINT = 'complete it as a login granted pggit_backup_admin';
    END IF;
    UPDATE pggit.backups b
       SET status = 'completed', completed_at = now(), error_message = NULL,
           backup_size = p_backup_size, compressed_size = p_compressed_size, compression_type = p_compression_type
     WHERE b.backup_id = p_backup_id;
    RETURN true;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- A worker's location, per tool (see finish_backup_job below). Returns the location to record.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pggit._require_location(p_param text, p_tool text, p_params jsonb, p_value jsonb)
RETURNS text LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_text  text;
    v_path  text;
    v_hint  text;
BEGIN
    v_hint := CASE p_tool
        WHEN 'pg_dump' THEN 'file:// and the absolute, normalised path of the dump (no . or .. components, no //)'
        WHEN 'pg_basebackup' THEN 'file:// and the absolute, normalised path of the base backup (no . or .. components, no //)'
        WHEN 'pgbackrest' THEN format('pgbackrest://%s/LABEL, LABEL as pgBackRest names backups (e.g. 20250101-000000F)',
                                      coalesce(p_params ->> 'stanza', 'STANZA'))
        WHEN 'barman' THEN format('barman://%s/BACKUP_ID, BACKUP_ID as Barman names backups (e.g. 20250101T000000)',
                                  coalesce(p_params ->> 'server', 'SERVER'))
        ELSE format('nothing: a %s job''s backup keeps the location it was registered with', p_tool) END;
    IF jsonb_typeof(p_value) <> 'string' THEN
        PERFORM pggit._invalid(p_param, format('must be a string, got a JSON %s', jsonb_typeof(p_value)), v_hint);
    END IF;
    v_text := p_value #>> '{}';
    IF length(v_text) > 2048 THEN
        PERFORM pggit._invalid(p_param, format('is %s characters long', length(v_text)), 'at most 2048 characters: ' || v_hint);
    END IF;
    IF p_tool IN ('pg_dump', 'pg_basebackup') THEN
        v_path := substr(v_text, 8);
        IF left(v_text, 7) = 'file://' AND v_path ~ '^(/[^/[:cntrl:]]+)+$' AND v_path !~ '/\.\.?(/|$)' THEN
            RETURN v_text;
        END IF;
    ELSIF p_tool = 'pgbackrest' THEN
        IF v_text = 'pgbackrest://' || (p_params ->> 'stanza') || '/' || substring(v_text FROM '[^/]*$')
           AND substring(v_text FROM '[^/]*$') ~ '^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$' THEN
            RETURN v_text;
        END IF;
    ELSIF p_tool = 'barman' THEN
        IF v_text = 'barman://' || (p_params ->> 'server') || '/' || substring(v_text FROM '[^/]*$')
           AND substring(v_text FROM '[^/]*$') ~ '^[0-9]{8}T[0-9]{6}$' THEN
            RETURN v_text;
        END IF;
    END IF;
    PERFORM pggit._invalid(p_param, format('%s is not a location a %s job makes', pggit._show(left(v_text, 200)), p_tool), v_hint);
END
$$;

-- Completes a claimed job and its backup in one transaction, recording what the tool produced.
-- p_backup: {"backup_size", "compressed_size", "compression_type", "checksum", "location",
-- "verified": true when the output was read back, "backup_type" when the tool made another kind
-- than asked, "metadata": {...}}; p_result: exit code,
-- duration, output tail... as the worker measured them. For a restore drill, p_backup's
-- metadata is the drill's report and the tested backup is marked restore-tested.
-- 011: the location is what the job's tool makes, checked against the job's own spec, because
-- restores and drills read it back (a relative 'file:--role=postgres' became a pg_restore
-- option): file:///ABSOLUTE/NORMALISED/PATH for pg_dump and pg_basebackup,
-- pgbackrest://STANZA/LABEL and barman://SERVER/BACKUP_ID of the job's stanza or server. A custom
-- backup's location is the one given to register_backup, and a drill's is its backup's: neither
-- takes one from the worker.
CREATE OR REPLACE FUNCTION pggit.finish_backup_job(
    p_job_id      uuid,
    p_claim_token text,
    p_output      text  DEFAULT NULL,
    p_backup      jsonb DEFAULT '{}',
    p_result      jsonb DEFAULT '{}'
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
DECLARE
    v_hash       bytea := pggit._token_hash(p_claim_token);
    v_backup_id  uuid;
    v_tool       text;
    v_backup     jsonb := coalesce(p_backup, '{}');
    v_size       bigint;
    v_compressed bigint;
    v_verified   boolean;
    v_type       text;
    v_job        record;
    v_location   text;
BEGIN
    -- everything is checked before anything is written
    PERFORM pggit._require_output_size('p_output', p_output);
    PERFORM pggit._require_json_size('p_backup', v_backup);
    PERFORM pggit._require_json_size('p_result', p_result);
    PERFORM pggit._require_options('p_backup', v_backup,
        ARRAY['backup_size', 'compressed_size', 'compression_type', 'checksum', 'location', 'verified',
              'backup_type', 'metadata']);
    v_size := pggit._opt_int('p_backup', v_backup, 'backup_size', 0, 9223372036854775807);
    v_compressed := pggit._opt_int('p_backup', v_backup, 'compressed_size', 0, 9223372036854775807);
    v_verified := pggit._opt_bool('p_backup', v_backup, 'verified', false);
    -- the tool may make another kind of backup than asked (pgBackRest turns an incr without a
    -- prior full into a full): the row records what was made
    v_type := pggit._opt_enum('p_backup', v_backup, 'backup_type', ARRAY['full', 'incremental', 'differential', 'snapshot'], NULL);
    IF v_backup ? 'location' AND jsonb_typeof(v_backup -> 'location') <> 'null' THEN
        SELECT j.tool, j.spec -> 'params' AS params INTO v_job
          FROM pggit.backup_jobs j
         WHERE j.job_id = p_job_id AND j.status = 'running'
           AND j.claim_secret_sha256 = v_hash AND j.claimed_by = session_user;
        IF NOT FOUND THEN
            RETURN false;  -- not this login's claim: the guarded UPDATE below would not match either
        END IF;
        v_location := pggit._require_location('p_backup.location', v_job.tool, v_job.params, v_backup -> 'location');
    END IF;
    IF v_backup ? 'checksum' AND jsonb_typeof(v_backup -> 'checksum') <> 'null' THEN
        PERFORM pggit._require_text('p_backup.checksum', v_backup ->> 'checksum', '^[A-Za-z0-9_.:+/=-]+$', 200,
            'ALGORITHM:HEX, e.g. sha256:...');
    END IF;
    IF v_backup ? 'compression_type' AND jsonb_typeof(v_backup -> 'compression_type') <> 'null' THEN
        PERFORM pggit._require_text('p_backup.compression_type', v_backup ->> 'compression_type', '^[A-Za-z0-9_.:+-]+$', 64,
            'a compression name such as gzip, lz4, zstd or none');
    END IF;
    IF jsonb_typeof(coalesce(v_backup -> 'metadata', '{}')) <> 'object' THEN
        PERFORM pggit._invalid('p_backup.metadata', 'must be a JSON object', 'e.g. {"label": "..."}');
    END IF;
    IF jsonb_typeof(coalesce(p_result, '{}')) <> 'object' THEN
        PERFORM pggit._invalid('p_result', 'must be a JSON object', 'e.g. {"exit_code": 0}');
    END IF;
    UPDATE pggit.backup_jobs j
       SET status = 'completed', completed_at = now(), lease_expires_at = NULL, last_error = NULL,
           output = p_output, result = coalesce(p_result, '{}')
     WHERE j.job_id = p_job_id AND j.status = 'running'
       AND j.claim_secret_sha256 = v_hash AND j.claimed_by = session_user
    RETURNING j.backup_id, j.tool INTO v_backup_id, v_tool;
    IF v_backup_id IS NULL THEN
        RETURN false;
    END IF;
    IF v_tool = 'restore_test' THEN
        UPDATE pggit.backups b
           SET restore_tested_at = now(), restore_test_result = 'passed',
               metadata = b.metadata || jsonb_build_object('restore_test',
                   coalesce(v_backup -> 'metadata', '{}') || jsonb_build_object('outcome', 'passed', 'job_id', p_job_id, 'at', now()))
         WHERE b.backup_id = v_backup_id;
        RETURN true;
    END IF;
    UPDATE pggit.backups b
       SET backup_size      = coalesce(v_size, b.backup_size),
           compressed_size  = coalesce(v_compressed, b.compressed_size),
           compression_type = coalesce(v_backup ->> 'compression_type', b.compression_type),
           checksum         = coalesce(v_backup ->> 'checksum', b.checksum),
           location         = coalesce(v_location, b.location),
           backup_type      = coalesce(v_type, b.backup_type),
           verified_at      = CASE WHEN v_verified THEN now() ELSE b.verified_at END,
           metadata         = b.metadata || coalesce(v_backup -> 'metadata', '{}')
     WHERE b.backup_id = v_backup_id AND b.status = 'completed';
    RETURN true;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Options are bounded before any pattern is matched: 40 MB of whitespace around digits took 8 s
-- to check and was stored, and sent with every claim. A whole p_options / p_metadata of at most
-- 64 KiB, a string option of at most 256 characters (webhook_url: 2048, its own limit), a number
-- of at most 32 characters.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pggit._require_options(p_param text, p_options jsonb, p_allowed text[])
RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_key   text;
    v_value jsonb;
    v_size  integer;
    v_limit integer;
BEGIN
    IF p_options IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    -- a worker's p_backup carries its metadata (row counts of every table) and has the 256 KiB
    -- of pggit._require_json_size; an operator's options are a handful of short values
    v_limit := CASE WHEN p_param = 'p_backup' THEN 262144 ELSE 65536 END;
    v_size := octet_length(p_options::text);
    IF v_size > v_limit THEN
        PERFORM pggit._invalid(p_param, format('is %s bytes of JSON', v_size),
            format('at most %s KiB; allowed keys: ', v_limit / 1024) || array_to_string(p_allowed, ', '));
    END IF;
    IF jsonb_typeof(p_options) <> 'object' THEN
        PERFORM pggit._invalid(p_param, format('must be a JSON object, got a JSON %s', jsonb_typeof(p_options)),
            'allowed keys: ' || array_to_string(p_allowed, ', '));
    END IF;
    FOR v_key, v_value IN SELECT e.key, e.value FROM jsonb_each(p_options) e ORDER BY e.key LOOP
        IF NOT v_key = ANY (p_allowed) THEN
            PERFORM pggit._invalid(p_param || '.' || pggit._show(left(v_key, 64)), 'unknown option',
                'allowed keys: ' || array_to_string(p_allowed, ', '));
        END IF;
        IF jsonb_typeof(v_value) = 'string' AND v_key NOT IN ('webhook_url', 'location', 'checksum', 'metadata')
           AND length(v_value #>> '{}') > 256 THEN
            PERFORM pggit._invalid(p_param || '.' || v_key, format('is %s characters long', length(v_value #>> '{}')),
                'at most 256 characters');
        END IF;
        IF jsonb_typeof(v_value) = 'number' AND length(v_value::text) > 32 THEN
            PERFORM pggit._invalid(p_param || '.' || v_key, format('is a number of %s characters', length(v_value::text)),
                'at most 32 characters');
        END IF;
    END LOOP;
    RETURN p_options;
END
$$;

CREATE OR REPLACE FUNCTION pggit._opt_int(p_param text, p_options jsonb, p_key text,
                                         p_min bigint, p_max bigint, p_default bigint DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_value jsonb := p_options -> p_key;
    v_text  text;
    v_hint  text := format('an integer from %s to %s (a JSON number or a string of digits)', p_min, p_max);
    v_int   numeric;
BEGIN
    IF v_value IS NULL OR jsonb_typeof(v_value) = 'null' THEN
        RETURN p_default;
    END IF;
    IF jsonb_typeof(v_value) = 'number' THEN
        v_text := v_value::text;
    ELSIF jsonb_typeof(v_value) = 'string' THEN
        v_text := v_value #>> '{}';
    ELSE
        PERFORM pggit._invalid(p_param || '.' || p_key, format('must be an integer, got a JSON %s', jsonb_typeof(v_value)), v_hint);
    END IF;
    IF length(v_text) > 32 THEN
        PERFORM pggit._invalid(p_param || '.' || p_key, format('is %s characters long', length(v_text)),
            v_hint || ', of at most 32 characters');
    END IF;
    IF v_text !~ '^[ \t\r\n]*-?[0-9]{1,18}[ \t\r\n]*$' THEN
        PERFORM pggit._invalid(p_param || '.' || p_key, format('%s is not an integer', pggit._show(v_text)), v_hint);
    END IF;
    v_int := btrim(v_text, E' \t\r\n')::numeric;
    IF v_int < p_min OR v_int > p_max THEN
        PERFORM pggit._invalid(p_param || '.' || p_key, format('%s is out of range', v_int), v_hint);
    END IF;
    RETURN v_int::bigint;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- At most one job decides a backup's outcome (restore drills aside): an invariant of the data,
-- so that no marker, race or hand edit can make two.
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    v_backups text;
BEGIN
    SELECT string_agg(backup_id::text, ', ' ORDER BY backup_id) INTO v_backups
      FROM (SELECT j.backup_id FROM pggit.backup_jobs j WHERE j.tool <> 'restore_test'
             GROUP BY j.backup_id HAVING count(*) > 1 LIMIT 20) d;
    IF v_backups IS NOT NULL THEN
        RAISE EXCEPTION 'pggit: backups % have more than one job that decides their outcome', v_backups
            USING ERRCODE = '55000',
                  HINT = 'keep the job that ran (SELECT * FROM pggit.backup_jobs WHERE backup_id = ...), delete the others as a '
                      || 'superuser, then run the install again';
    END IF;
END
$$;
CREATE UNIQUE INDEX IF NOT EXISTS backup_jobs_one_per_backup
    ON pggit.backup_jobs (backup_id) WHERE tool <> 'restore_test';

-- ---------------------------------------------------------------------------------------------
-- Grants: a backup is registered with register_backup or a scheduling function, a job is
-- enqueued by the scheduling functions; the admin keeps renaming (backup_name) and DELETE.
-- ---------------------------------------------------------------------------------------------
REVOKE INSERT ON pggit.backup_jobs FROM pggit_backup_admin;
REVOKE INSERT, UPDATE ON pggit.backups FROM pggit_backup_admin;
GRANT UPDATE (backup_name) ON pggit.backups TO pggit_backup_admin;
REVOKE ALL ON FUNCTION pggit._require_location(text, text, jsonb, jsonb) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- The marker: on for the queue functions (and the triggers that keep a backup in step with its
-- job), which write rows as the queue; off for every other SECURITY DEFINER function, so that a
-- caller's SET pggit.queue_internal = 'on' never reaches the triggers inside them. Found by
-- query, so none is forgotten; tests/test_attack_marker.py checks the list of those with 'on'.
-- Last in this file: CREATE OR REPLACE above resets a function's settings to its own SET clauses.
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'pggit'::regnamespace AND p.prosecdef
           AND NOT coalesce('pggit.queue_internal=on' = ANY (p.proconfig), false)
         ORDER BY 1
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET pggit.queue_internal = ''off''', v_fn);
    END LOOP;
END
$$;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (11, '011_hardening')
    ON CONFLICT (version) DO NOTHING;
