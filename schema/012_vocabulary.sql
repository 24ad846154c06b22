-- 012: one vocabulary for a job's state. The rule that turns a job's status, attempts and
-- max_attempts into its state (ready, in_progress, will_retry, permanently_failed, completed,
-- cancelled) was spelled out eighteen times across the view, the triggers and the queue
-- functions; here it is written once, as pggit.backup_job_state, and every one of them uses it.
-- The latest definition of each function is redefined (005's rescue, 009's claim, fail and
-- release, 010's refusal, 011's backup guard, 002's view and triggers), with its body unchanged
-- but for the rule. The guide's own SQL (`status = 'failed' AND attempts < max_attempts` on
-- pggit.backup_jobs) reads the same columns as before and still works as written.
--
-- A function, not a generated column: a BEFORE trigger cannot see a generated column's value
-- (it is computed after the trigger), and the guard triggers need the rule on NEW; adding a
-- stored column rewrites the table under an exclusive lock on upgrade, needs its own column
-- grant (readers have column-level SELECT on backup_jobs), and would show up in the triggers'
-- to_jsonb(NEW) checks. A plain IMMUTABLE SQL function without SET clauses is inlined by the
-- planner (so the claim's scan costs what the spelled-out rule cost); because it has no
-- search_path of its own, its operators are schema-qualified, so no caller's search_path can
-- change what it computes.

CREATE OR REPLACE FUNCTION pggit.backup_job_state(p_status text, p_attempts integer, p_max_attempts integer)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
               WHEN p_status OPERATOR(pg_catalog.=) 'queued' THEN 'ready'
               WHEN p_status OPERATOR(pg_catalog.=) 'running' THEN 'in_progress'
               WHEN p_status OPERATOR(pg_catalog.=) 'failed'
                    AND p_attempts OPERATOR(pg_catalog.<) p_max_attempts THEN 'will_retry'
               WHEN p_status OPERATOR(pg_catalog.=) 'failed' THEN 'permanently_failed'
               WHEN p_status OPERATOR(pg_catalog.=) 'completed' THEN 'completed'
               WHEN p_status OPERATOR(pg_catalog.=) 'cancelled' THEN 'cancelled'
           END
$$;
COMMENT ON FUNCTION pggit.backup_job_state(text, integer, integer) IS
    'a job''s state from its status, attempts and max_attempts: ready, in_progress, will_retry, permanently_failed, completed or cancelled (NULL for any other status)';

-- Readers need EXECUTE: a function in a view runs with the privileges of the view's reader.
REVOKE ALL ON FUNCTION pggit.backup_job_state(text, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.backup_job_state(text, integer, integer) TO pggit_backup_reader;

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
       j.command,
       j.target,
       b.status AS backup_status,
       b.branch_name,
       b.commit_hash
  FROM pggit.backup_jobs j
  JOIN pggit.backups b ON b.backup_id = j.backup_id;

-- The triggers that keep a backup in step with its job (002): a job in play (ready, in
-- progress, waiting for a retry) keeps its backup in progress.
CREATE OR REPLACE FUNCTION pggit._backup_jobs_after_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
DECLARE
    v_state text := pggit.backup_job_state(NEW.status, NEW.attempts, NEW.max_attempts);
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NULL;
    END IF;
    IF NEW.tool = 'restore_test' THEN
        -- a drill never changes its backup's status; a drill that fails for good is its finding
        IF v_state = 'permanently_failed' THEN
            UPDATE pggit.backups b
               SET restore_tested_at = now(), restore_test_result = 'failed',
                   metadata = b.metadata || jsonb_build_object('restore_test', jsonb_build_object(
                       'outcome', 'failed', 'error', NEW.last_error, 'job_id', NEW.job_id, 'at', now()))
             WHERE b.backup_id = NEW.backup_id;
        END IF;
    ELSIF v_state IN ('ready', 'in_progress', 'will_retry') THEN
        -- a job back in play puts a failed or cancelled backup back in progress; a completed
        -- backup is never touched
        UPDATE pggit.backups b
           SET status = 'in_progress', error_message = NULL, completed_at = NULL
         WHERE b.backup_id = NEW.backup_id AND b.status IN ('failed', 'cancelled');
        IF NEW.status = 'running' THEN
            UPDATE pggit.backups b SET started_at = now()
             WHERE b.backup_id = NEW.backup_id AND b.started_at IS NULL AND b.status = 'in_progress';
        END IF;
    ELSIF NEW.status = 'failed' THEN
        UPDATE pggit.backups b
           SET status = 'failed', error_message = NEW.last_error, completed_at = now()
         WHERE b.backup_id = NEW.backup_id AND b.status = 'in_progress';
    ELSIF NEW.status = 'cancelled' THEN
        UPDATE pggit.backups b
           SET status = 'cancelled', error_message = NEW.last_error, completed_at = now()
         WHERE b.backup_id = NEW.backup_id AND b.status = 'in_progress';
    ELSIF NEW.status = 'completed' THEN
        UPDATE pggit.backups b
           SET status = 'completed', error_message = NULL, completed_at = now()
         WHERE b.backup_id = NEW.backup_id AND b.status = 'in_progress';
    END IF;

    IF v_state = 'ready' OR (v_state = 'will_retry' AND NEW.next_retry_at <= now()) THEN
        PERFORM pg_notify('pggit_backup_job_ready', NEW.tool);
    ELSIF NEW.status = 'cancelled' AND TG_OP = 'UPDATE' AND OLD.status = 'running' THEN
        PERFORM pg_notify('pggit_backup_job_cancelled', NEW.job_id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pggit._backup_jobs_after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
BEGIN
    IF OLD.tool <> 'restore_test' THEN
        UPDATE pggit.backups b
           SET status = 'cancelled', completed_at = now(), error_message = 'its job was deleted'
         WHERE b.backup_id = OLD.backup_id AND b.status = 'in_progress'
           AND NOT EXISTS (SELECT 1 FROM pggit.backup_jobs j
                            WHERE j.backup_id = b.backup_id AND j.tool <> 'restore_test'
                              AND pggit.backup_job_state(j.status, j.attempts, j.max_attempts) IN ('ready', 'in_progress', 'will_retry'));
    END IF;
    RETURN NULL;
END
$$;

-- The claim (009): candidates are jobs that are ready or due for a retry.
CREATE OR REPLACE FUNCTION pggit._claim_job(
    p_worker_id     text,
    p_tools         text[],
    p_lease_seconds integer,
    p_via           text
) RETURNS SETOF pggit.claimed_job
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_candidate uuid;
    v_tool      text;
    v_claimed   uuid;
    v_tried     uuid[] := '{}';
    v_token     text;
BEGIN
    PERFORM pggit._require_worker_id(p_worker_id);
    PERFORM pggit._require_lease(p_lease_seconds);
    IF p_tools IS NOT NULL THEN
        FOREACH v_tool IN ARRAY p_tools LOOP
            PERFORM pggit._require_enum('p_tools', v_tool,
                ARRAY['pgbackrest', 'barman', 'pg_dump', 'pg_basebackup', 'custom', 'restore_test']);
        END LOOP;
    END IF;

    LOOP
        v_candidate := NULL;
        SELECT j.job_id INTO v_candidate
          FROM pggit.backup_jobs j
         WHERE j.status IN ('queued', 'failed')  -- backup_jobs_claimable_idx's predicate, for the planner
           AND pggit.backup_job_state(j.status, j.attempts, j.max_attempts) IN ('ready', 'will_retry')
           AND (j.next_retry_at IS NULL OR j.next_retry_at <= now())
           AND (p_tools IS NULL OR j.tool = ANY (p_tools))
           AND NOT (j.job_id = ANY (v_tried))
           AND (j.target IS NULL OR NOT EXISTS (
                   SELECT 1 FROM pggit.backup_jobs r WHERE r.target = j.target AND r.lease_expires_at IS NOT NULL))
         ORDER BY j.priority, (j.status <> 'queued'), j.created_at, j.job_id
         LIMIT 1
           FOR UPDATE OF j SKIP LOCKED;
        EXIT WHEN v_candidate IS NULL OR cardinality(v_tried) >= 32;
        v_tried := v_tried || v_candidate;
        v_token := encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex');
        BEGIN
            UPDATE pggit.backup_jobs j
               SET status = 'running',
                   attempts = j.attempts + 1,
                   claim_token = j.claim_token + 1,
                   claim_secret_sha256 = sha256(convert_to(v_token, 'UTF8')),
                   claimed_by = session_user,
                   claimed_via = p_via,
                   locked_by = p_worker_id,
                   started_at = now(),
                   heartbeat_at = now(),
                   lease_expires_at = now() + make_interval(secs => p_lease_seconds),
                   next_retry_at = NULL,
                   completed_at = NULL
             WHERE j.job_id = v_candidate
               AND pggit.backup_job_state(j.status, j.attempts, j.max_attempts) IN ('ready', 'will_retry')
            RETURNING j.job_id INTO v_claimed;
        EXCEPTION WHEN unique_violation THEN
            -- another worker took a job of the same target a moment ago
            v_claimed := NULL;
        END;
        IF v_claimed IS NOT NULL THEN
            RETURN QUERY
                SELECT j.job_id, j.backup_id, j.tool, j.spec, j.command, v_token, j.attempts,
                       j.max_attempts, j.priority, j.lease_expires_at, j.metadata,
                       b.backup_name, b.branch_name, b.commit_hash, current_database()::text
                  FROM pggit.backup_jobs j JOIN pggit.backups b ON b.backup_id = j.backup_id
                 WHERE j.job_id = v_claimed;
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- The failure (009): the job waits for a retry when a failure with its attempts leaves one.
CREATE OR REPLACE FUNCTION pggit._fail_job(
    p_job_id      uuid,
    p_token_hash  bytea,
    p_error       text,
    p_retryable   boolean,
    p_base_delay  integer,
    p_max_delay   integer,
    p_result      jsonb
) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_state text;
BEGIN
    IF p_error IS NULL OR btrim(p_error) = '' THEN
        PERFORM pggit._invalid('p_error', 'must not be empty', 'what went wrong, for the operator');
    END IF;
    PERFORM pggit._require_output_size('p_error', p_error);
    PERFORM pggit._require_json_size('p_result', p_result);
    IF jsonb_typeof(coalesce(p_result, '{}')) <> 'object' THEN
        PERFORM pggit._invalid('p_result', 'must be a JSON object', 'e.g. {"exit_code": 1}');
    END IF;
    IF p_base_delay IS NULL OR p_base_delay < 0 OR p_base_delay > 604800 THEN
        PERFORM pggit._invalid('p_retry_delay_seconds', format('%s is out of range', coalesce(p_base_delay::text, 'NULL')),
            'seconds from 0 to 604800');
    END IF;
    IF p_max_delay IS NULL OR p_max_delay < p_base_delay THEN
        PERFORM pggit._invalid('p_max_delay', format('%s is below the base delay', coalesce(p_max_delay::text, 'NULL')),
            'seconds, at least the base delay');
    END IF;
    UPDATE pggit.backup_jobs j
       SET status = 'failed',
           last_error = p_error,
           result = coalesce(p_result, '{}'),
           lease_expires_at = NULL,
           attempts = CASE WHEN p_retryable THEN j.attempts ELSE greatest(j.attempts, j.max_attempts) END,
           -- delay = base_delay * 2^(attempts-1), capped
           next_retry_at = CASE WHEN p_retryable AND pggit.backup_job_state('failed', j.attempts, j.max_attempts) = 'will_retry'
                                THEN now() + make_interval(secs => least(p_max_delay::float8,
                                         p_base_delay * power(2::float8, greatest(j.attempts - 1, 0))))
                           END,
           completed_at = CASE WHEN p_retryable AND pggit.backup_job_state('failed', j.attempts, j.max_attempts) = 'will_retry' THEN NULL ELSE now() END
     WHERE j.job_id = p_job_id AND j.status = 'running' AND j.claimed_by = session_user
       AND (CASE WHEN p_token_hash IS NULL THEN j.claimed_via = 'guide' ELSE j.claim_secret_sha256 = p_token_hash END)
    RETURNING pggit.backup_job_state(j.status, j.attempts, j.max_attempts)
         INTO v_state;
    RETURN v_state;
END
$$;

CREATE OR REPLACE FUNCTION pggit.release_worker_backup_jobs(
    p_worker_id text,
    p_reason    text DEFAULT NULL
) RETURNS TABLE (job_id uuid, job_state text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
#variable_conflict use_column
DECLARE
    v_any boolean;
BEGIN
    PERFORM pggit._require_worker_id(p_worker_id);
    PERFORM pggit._require_output_size('p_reason', p_reason);
    v_any := pg_has_role(session_user, 'pggit_backup_admin', 'MEMBER');
    RETURN QUERY
    UPDATE pggit.backup_jobs j
       SET status = 'failed',
           last_error = coalesce(p_reason, format('worker %s died while running this job', p_worker_id)),
           lease_expires_at = NULL,
           next_retry_at = CASE WHEN pggit.backup_job_state('failed', j.attempts, j.max_attempts) = 'will_retry' THEN now() END,
           completed_at = CASE WHEN pggit.backup_job_state('failed', j.attempts, j.max_attempts) = 'will_retry' THEN NULL ELSE now() END
     WHERE j.status = 'running' AND j.locked_by = p_worker_id AND (v_any OR j.claimed_by = session_user)
    RETURNING j.job_id, pggit.backup_job_state(j.status, j.attempts, j.max_attempts);
    UPDATE pggit.backup_jobs j SET lease_expires_at = NULL
     WHERE j.status <> 'running' AND j.locked_by = p_worker_id AND j.lease_expires_at IS NOT NULL
       AND (v_any OR j.claimed_by = session_user);
END
$$;

-- The rescue (005; 009 left it as it was).
CREATE OR REPLACE FUNCTION pggit.rescue_expired_backup_jobs()
RETURNS TABLE (job_id uuid, worker_id text, job_state text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH expired AS (
        SELECT e.job_id, e.locked_by FROM pggit.backup_jobs e
         WHERE e.status = 'running' AND e.lease_expires_at < clock_timestamp()
           FOR UPDATE SKIP LOCKED
    )
    UPDATE pggit.backup_jobs j
       SET status = 'failed',
           last_error = format('lease expired at %s: worker %s stopped renewing it (crashed, killed, hung or cut off from the database)',
                               j.lease_expires_at, j.locked_by),
           lease_expires_at = NULL,
           next_retry_at = CASE WHEN pggit.backup_job_state('failed', j.attempts, j.max_attempts) = 'will_retry' THEN now() END,
           completed_at = CASE WHEN pggit.backup_job_state('failed', j.attempts, j.max_attempts) = 'will_retry' THEN NULL ELSE now() END
      FROM expired
     WHERE j.job_id = expired.job_id AND j.status = 'running' AND j.lease_expires_at < clock_timestamp()
    RETURNING j.job_id, expired.locked_by,
              pggit.backup_job_state(j.status, j.attempts, j.max_attempts);
    -- a cancelled job whose worker never confirmed its tool stopped frees its target at lease end
    UPDATE pggit.backup_jobs j SET lease_expires_at = NULL
     WHERE j.status <> 'running' AND j.lease_expires_at < clock_timestamp();
END
$$;

-- The refusal (010) and the backup guard (011) name the job's state the same way.
CREATE OR REPLACE FUNCTION pggit._refuse_backup_with_job(p_function text, p_backup pggit.backups, p_job pggit.backup_jobs)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'pggit: backup % is %, with its job % %: it changes only through that job, not with %',
            p_backup.backup_id, p_backup.status, p_job.job_id,
            CASE pggit.backup_job_state(p_job.status, p_job.attempts, p_job.max_attempts)
                 WHEN 'will_retry' THEN 'waiting for a retry'
                 WHEN 'permanently_failed' THEN 'failed for good'
                 ELSE p_job.status END,
            p_function
        USING ERRCODE = '55000',
              HINT = CASE WHEN p_job.status = 'completed'
                          THEN 'its job completed it; a completed backup''s outcome never changes'
                          WHEN pggit.backup_job_state(p_job.status, p_job.attempts, p_job.max_attempts) IN ('cancelled', 'permanently_failed')
                          THEN 'its job has ended and decided the backup''s outcome; to run it again, reset the job: UPDATE '
                               || 'pggit.backup_jobs SET status = ''queued'', next_retry_at = NULL, attempts = 0 WHERE job_id = '''
                               || p_job.job_id || ''''
                          ELSE 'a worker completes it with pggit.finish_backup_job or complete_backup_job, or fails it; '
                               || 'to stop it: UPDATE pggit.backup_jobs SET status = ''cancelled'' WHERE job_id = '''
                               || p_job.job_id || '''' END;
END
$$;

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
    SELECT j.job_id, j.status, pggit.backup_job_state(j.status, j.attempts, j.max_attempts)
               IN ('ready', 'in_progress', 'will_retry') AS in_play
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

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (12, '012_vocabulary')
    ON CONFLICT (version) DO NOTHING;
