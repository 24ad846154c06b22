-- 005: the queue's rules. Every transition is one guarded UPDATE: it names the state it expects
-- (status = 'running' AND claim_token = the caller's), so a late or duplicate call from a worker
-- whose claim was lost (cancelled, rescued, reclaimed) changes nothing and returns false.
-- The functions set pggit.queue_internal so the status trigger lets them through.

CREATE OR REPLACE FUNCTION pggit._require_worker_id(p_worker_id text) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT pggit._require_text('p_worker_id', p_worker_id, '^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$', 128,
        'a worker id of 1-128 characters: letters, digits, _ . : @ / - (e.g. worker-01/2)')
$$;

CREATE OR REPLACE FUNCTION pggit._require_token(p_claim_token bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF p_claim_token IS NULL THEN
        PERFORM pggit._invalid('p_claim_token', 'must not be NULL', 'the claim_token claim_backup_job returned');
    END IF;
    RETURN p_claim_token;
END
$$;

CREATE OR REPLACE FUNCTION pggit._require_lease(p_lease_seconds integer) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF p_lease_seconds IS NULL OR p_lease_seconds < 1 OR p_lease_seconds > 86400 THEN
        PERFORM pggit._invalid('p_lease_seconds', format('%s is out of range', coalesce(p_lease_seconds::text, 'NULL')),
            'seconds from 1 to 86400');
    END IF;
    RETURN p_lease_seconds;
END
$$;

-- What a claim returns: the job, its structured spec, the claim token every later call needs,
-- and what the worker needs to name the backup. One type for both claim functions.
DO $$
BEGIN
    IF to_regtype('pggit.claimed_job') IS NULL THEN
        CREATE TYPE pggit.claimed_job AS (
            job_id           uuid,
            backup_id        uuid,
            tool             text,
            spec             jsonb,
            command          text,
            claim_token      bigint,
            attempts         integer,
            max_attempts     integer,
            priority         integer,
            lease_expires_at timestamptz,
            metadata         jsonb,
            backup_name      text,
            branch_name      text,
            commit_hash      text,
            database_name    text
        );
    END IF;
END
$$;

-- Claims the next runnable job: by priority (lower first), then fresh before retries, then age.
-- One candidate row is locked at a time (SKIP LOCKED), so concurrent claimers each get a row
-- instead of one claimer holding a batch. Targets that already have a holder are skipped; the
-- unique index on held targets settles the race where two claims pass that check at once.
-- p_via records how the claim was made ('worker' with a token, 'guide' without one).
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
         WHERE (j.status = 'queued' OR (j.status = 'failed' AND j.attempts < j.max_attempts))
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
        BEGIN
            UPDATE pggit.backup_jobs j
               SET status = 'running',
                   attempts = j.attempts + 1,
                   claim_token = j.claim_token + 1,
                   claimed_via = p_via,
                   locked_by = p_worker_id,
                   started_at = now(),
                   heartbeat_at = now(),
                   lease_expires_at = now() + make_interval(secs => p_lease_seconds),
                   next_retry_at = NULL,
                   completed_at = NULL
             WHERE j.job_id = v_candidate
               AND (j.status = 'queued' OR (j.status = 'failed' AND j.attempts < j.max_attempts))
            RETURNING j.job_id INTO v_claimed;
        EXCEPTION WHEN unique_violation THEN
            -- another worker took a job of the same target a moment ago
            v_claimed := NULL;
        END;
        IF v_claimed IS NOT NULL THEN
            RETURN QUERY
                SELECT j.job_id, j.backup_id, j.tool, j.spec, j.command, j.claim_token, j.attempts,
                       j.max_attempts, j.priority, j.lease_expires_at, j.metadata,
                       b.backup_name, b.branch_name, b.commit_hash, current_database()::text
                  FROM pggit.backup_jobs j JOIN pggit.backups b ON b.backup_id = j.backup_id
                 WHERE j.job_id = v_claimed;
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- The workers' claim: returns the structured spec and the claim token every later call needs.
CREATE OR REPLACE FUNCTION pggit.claim_backup_job(
    p_worker_id     text,
    p_tools         text[]  DEFAULT NULL,
    p_lease_seconds integer DEFAULT 60
) RETURNS SETOF pggit.claimed_job
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
    SELECT * FROM pggit._claim_job(p_worker_id, p_tools, p_lease_seconds, 'worker')
$$;

-- The guide's claim, for psql users and older listeners: same rows, with an hour's lease.
CREATE OR REPLACE FUNCTION pggit.get_next_backup_job(
    p_worker_id TEXT DEFAULT 'default-worker'
) RETURNS TABLE (
    job_id    UUID,
    backup_id UUID,
    command   TEXT,
    tool      TEXT,
    attempts  INTEGER,
    metadata  JSONB
)
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
    SELECT c.job_id, c.backup_id, c.command, c.tool, c.attempts, c.metadata
      FROM pggit._claim_job(p_worker_id, NULL, 3600, 'guide') c
$$;

-- Renews the lease. False means the job is no longer this claim's (cancelled, rescued,
-- deleted): the worker must stop the tool and report nothing. This is the one cheap query a
-- worker runs every heartbeat.
CREATE OR REPLACE FUNCTION pggit.heartbeat_backup_job(
    p_job_id        uuid,
    p_claim_token   bigint,
    p_lease_seconds integer DEFAULT 60
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
BEGIN
    PERFORM pggit._require_lease(p_lease_seconds);
    UPDATE pggit.backup_jobs j
       SET lease_expires_at = now() + make_interval(secs => p_lease_seconds), heartbeat_at = now()
     WHERE j.job_id = p_job_id AND j.status = 'running' AND j.claim_token = p_claim_token;
    RETURN FOUND;
END
$$;

-- Completes a claimed job and its backup in one transaction, recording what the tool produced.
-- p_backup: {"backup_size", "compressed_size", "compression_type", "checksum", "location",
-- "verified": true when the output was read back, "backup_type" when the tool made another kind
-- than asked, "metadata": {...}}; p_result: exit code,
-- duration, output tail... as the worker measured them. For a restore drill, p_backup's
-- metadata is the drill's report and the tested backup is marked restore-tested.
CREATE OR REPLACE FUNCTION pggit.finish_backup_job(
    p_job_id      uuid,
    p_claim_token bigint,
    p_output      text  DEFAULT NULL,
    p_backup      jsonb DEFAULT '{}',
    p_result      jsonb DEFAULT '{}'
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
DECLARE
    v_backup_id  uuid;
    v_tool       text;
    v_backup     jsonb := coalesce(p_backup, '{}');
    v_size       bigint;
    v_compressed bigint;
    v_verified   boolean;
    v_type       text;
BEGIN
    -- everything is checked before anything is written
    PERFORM pggit._require_options('p_backup', v_backup,
        ARRAY['backup_size', 'compressed_size', 'compression_type', 'checksum', 'location', 'verified',
              'backup_type', 'metadata']);
    v_size := pggit._opt_int('p_backup', v_backup, 'backup_size', 0, 9223372036854775807);
    v_compressed := pggit._opt_int('p_backup', v_backup, 'compressed_size', 0, 9223372036854775807);
    v_verified := pggit._opt_bool('p_backup', v_backup, 'verified', false);
    -- the tool may make another kind of backup than asked (pgBackRest turns an incr without a
    -- prior full into a full): the row records what was made
    v_type := pggit._opt_enum('p_backup', v_backup, 'backup_type', ARRAY['full', 'incremental', 'differential', 'snapshot'], NULL);
    IF v_backup ? 'location' THEN
        PERFORM pggit._require_text('p_backup.location', v_backup ->> 'location', '^[^[:cntrl:]]+$', 2048,
            'where the backup lives, without control characters (at most 2048 characters)');
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
           output = left(p_output, 65536), result = coalesce(p_result, '{}')
     WHERE j.job_id = p_job_id AND j.status = 'running' AND j.claim_token = p_claim_token
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
           location         = coalesce(v_backup ->> 'location', b.location),
           backup_type      = coalesce(v_type, b.backup_type),
           verified_at      = CASE WHEN v_verified THEN now() ELSE b.verified_at END,
           metadata         = b.metadata || coalesce(v_backup -> 'metadata', '{}')
     WHERE b.backup_id = v_backup_id AND b.status = 'completed';
    RETURN true;
END
$$;

-- Shared by the guide's fail_backup_job and the workers' guarded variant. Returns the job's new
-- state ('will_retry' or 'permanently_failed'), or NULL when the guard did not match.
-- A failure no retry can fix (invalid parameters, a command not allowed) uses up the remaining
-- attempts at once, so the guide's `attempts >= max_attempts` still finds it.
CREATE OR REPLACE FUNCTION pggit._fail_job(
    p_job_id      uuid,
    p_claim_token bigint,
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
           last_error = left(p_error, 8192),
           result = coalesce(p_result, '{}'),
           lease_expires_at = NULL,
           attempts = CASE WHEN p_retryable THEN j.attempts ELSE greatest(j.attempts, j.max_attempts) END,
           -- delay = base_delay * 2^(attempts-1), capped
           next_retry_at = CASE WHEN p_retryable AND j.attempts < j.max_attempts
                                THEN now() + make_interval(secs => least(p_max_delay::float8,
                                         p_base_delay * power(2::float8, greatest(j.attempts - 1, 0))))
                           END,
           completed_at = CASE WHEN p_retryable AND j.attempts < j.max_attempts THEN NULL ELSE now() END
     WHERE j.job_id = p_job_id AND j.status = 'running'
       -- without a token (the guide's call) only a claim made the guide's way
       AND (CASE WHEN p_claim_token IS NULL THEN j.claimed_via = 'guide' ELSE j.claim_token = p_claim_token END)
    RETURNING CASE WHEN j.attempts < j.max_attempts THEN 'will_retry' ELSE 'permanently_failed' END
         INTO v_state;
    RETURN v_state;
END
$$;

CREATE OR REPLACE FUNCTION pggit.fail_backup_job(
    p_job_id              UUID,
    p_error               TEXT,
    p_retry_delay_seconds INTEGER DEFAULT 300
) RETURNS BOOLEAN
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
    SELECT pggit._fail_job(p_job_id, NULL, p_error, true, p_retry_delay_seconds,
                           greatest(21600, p_retry_delay_seconds), '{}') IS NOT NULL
$$;

CREATE OR REPLACE FUNCTION pggit.fail_claimed_backup_job(
    p_job_id      uuid,
    p_claim_token bigint,
    p_error       text,
    p_retryable   boolean DEFAULT true,
    p_base_delay  integer DEFAULT 300,
    p_max_delay   integer DEFAULT 21600,
    p_result      jsonb   DEFAULT '{}'
) RETURNS text
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
    SELECT pggit._fail_job(p_job_id, pggit._require_token(p_claim_token), p_error, coalesce(p_retryable, true),
                           p_base_delay, p_max_delay, p_result)
$$;

-- The guide's completion, for psql users: guarded by status only (no claim token).
CREATE OR REPLACE FUNCTION pggit.complete_backup_job(
    p_job_id UUID,
    p_output TEXT
) RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
BEGIN
    UPDATE pggit.backup_jobs j
       SET status = 'completed', completed_at = now(), lease_expires_at = NULL, last_error = NULL,
           output = left(p_output, 65536)
     WHERE j.job_id = p_job_id AND j.status = 'running' AND j.claimed_via = 'guide';
    RETURN FOUND;
END
$$;

-- Hands a claimed job back without spending an attempt (the service is stopping).
CREATE OR REPLACE FUNCTION pggit.release_backup_job(
    p_job_id      uuid,
    p_claim_token bigint,
    p_reason      text DEFAULT 'handed back by its worker'
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
BEGIN
    UPDATE pggit.backup_jobs j
       SET status = 'queued', attempts = greatest(j.attempts - 1, 0), locked_by = NULL,
           lease_expires_at = NULL, started_at = NULL, next_retry_at = NULL,
           result = jsonb_build_object('released', left(coalesce(p_reason, ''), 1024), 'released_at', now())
     WHERE j.job_id = p_job_id AND j.status = 'running' AND j.claim_token = p_claim_token;
    RETURN FOUND;
END
$$;

-- Returns running jobs whose lease expired to the queue, counting the attempt (or failing them
-- for good when no attempt is left). Safe to call often and concurrently: the UPDATE re-checks
-- status and lease on the row it locked, so a job completed or renewed meanwhile is left alone.
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
           next_retry_at = CASE WHEN j.attempts < j.max_attempts THEN now() END,
           completed_at = CASE WHEN j.attempts < j.max_attempts THEN NULL ELSE now() END
      FROM expired
     WHERE j.job_id = expired.job_id AND j.status = 'running' AND j.lease_expires_at < clock_timestamp()
    RETURNING j.job_id, expired.locked_by,
              CASE WHEN j.attempts < j.max_attempts THEN 'will_retry' ELSE 'permanently_failed' END;
    -- a cancelled job whose worker never confirmed its tool stopped frees its target at lease end
    UPDATE pggit.backup_jobs j SET lease_expires_at = NULL
     WHERE j.status <> 'running' AND j.lease_expires_at < clock_timestamp();
END
$$;

-- After a cancelled job's tool is stopped, its worker frees the job's target (the lease it kept).
CREATE OR REPLACE FUNCTION pggit.abandon_backup_job(
    p_job_id      uuid,
    p_claim_token bigint
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
BEGIN
    UPDATE pggit.backup_jobs j SET lease_expires_at = NULL
     WHERE j.job_id = p_job_id AND j.claim_token = pggit._require_token(p_claim_token)
       AND j.status <> 'running' AND j.lease_expires_at IS NOT NULL;
    RETURN FOUND;
END
$$;

-- Returns the running jobs of a worker known to be dead (its supervisor reaped it) to the queue
-- at once instead of waiting for the lease: called by the worker that replaces it, under the
-- same worker id, before it claims anything. Counts the attempt, like a rescue.
CREATE OR REPLACE FUNCTION pggit.release_worker_backup_jobs(
    p_worker_id text,
    p_reason    text DEFAULT NULL
) RETURNS TABLE (job_id uuid, job_state text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
#variable_conflict use_column
BEGIN
    PERFORM pggit._require_worker_id(p_worker_id);
    RETURN QUERY
    UPDATE pggit.backup_jobs j
       SET status = 'failed',
           last_error = left(coalesce(p_reason, format('worker %s died while running this job', p_worker_id)), 8192),
           lease_expires_at = NULL,
           next_retry_at = CASE WHEN j.attempts < j.max_attempts THEN now() END,
           completed_at = CASE WHEN j.attempts < j.max_attempts THEN NULL ELSE now() END
     WHERE j.status = 'running' AND j.locked_by = p_worker_id
    RETURNING j.job_id, CASE WHEN j.attempts < j.max_attempts THEN 'will_retry' ELSE 'permanently_failed' END;
    UPDATE pggit.backup_jobs j SET lease_expires_at = NULL
     WHERE j.status <> 'running' AND j.locked_by = p_worker_id AND j.lease_expires_at IS NOT NULL;
END
$$;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (5, '005_queue')
    ON CONFLICT (version) DO NOTHING;
