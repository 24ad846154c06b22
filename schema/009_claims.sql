-- 009: a claim belongs to the login that made it, and its token is a secret.
-- In 0.1.0 the claim token counted 1, 2, 3 per job, every reader could select it, and the
-- worker id was a free string: any worker login could finish, fail, release or abandon another
-- host's claim. Now a claim records session_user (claimed_by) and a random token (244 bits) that
-- the claim returns once, to the claimer; the database keeps only its sha256
-- (claim_secret_sha256). Every call that acts on a claim checks job, state, token hash and login
-- in the same guarded UPDATE, so a late, forged or foreign call changes nothing and returns false.
-- claim_token (bigint) stays as a plain claim counter: it authorises nothing.
-- claimed_by and claim_secret_sha256 describe the job's latest claim: set by the claim, kept
-- after it ends (so a worker whose report's commit it did not see can ask how the job ended,
-- pggit.claimed_job_status) and replaced by the next claim. They authorise only while the job
-- is running (or, after a cancel, while it still holds its lease for abandon_backup_job).
-- Results are capped in size here, with an error, instead of being cut silently or stored whole.

ALTER TABLE pggit.backup_jobs ADD COLUMN IF NOT EXISTS claimed_by text;
ALTER TABLE pggit.backup_jobs ADD COLUMN IF NOT EXISTS claim_secret_sha256 bytea;
COMMENT ON COLUMN pggit.backup_jobs.claimed_by IS
    'the login (session_user) that made the latest claim; only it may heartbeat, finish, fail, release or abandon it';
COMMENT ON COLUMN pggit.backup_jobs.claim_secret_sha256 IS
    'sha256 of the latest claim''s secret token (the token itself is returned once, to the claimer, and stored nowhere)';
COMMENT ON COLUMN pggit.backup_jobs.claim_token IS
    'how many times the job was claimed: a counter, not a secret, and it authorises nothing';

-- No role but the table owner reads the counter or the hash (readers got claim_token in 007);
-- every other column stays readable as before.
REVOKE SELECT (claim_token) ON pggit.backup_jobs FROM pggit_backup_reader;
REVOKE SELECT (claimed_by, claim_secret_sha256) ON pggit.backup_jobs FROM pggit_backup_reader;
GRANT SELECT (claimed_by) ON pggit.backup_jobs TO pggit_backup_reader;

-- Sizes a DBA would find generous; a worker trims its own output to fit before it sends it.
CREATE OR REPLACE FUNCTION pggit._require_size(p_param text, p_bytes bigint, p_limit integer, p_hint text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF p_bytes > p_limit THEN
        PERFORM pggit._invalid(p_param, format('%s bytes is more than the limit of %s bytes (%s KiB)',
                                               p_bytes, p_limit, p_limit / 1024), p_hint);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pggit._require_output_size(p_param text, p_value text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    PERFORM pggit._require_size(p_param, octet_length(p_value), 65536,
        'keep the last 64 KiB of the text (a tool''s full log belongs in a file, not in the queue)');
    RETURN p_value;
END
$$;

CREATE OR REPLACE FUNCTION pggit._require_json_size(p_param text, p_value jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    PERFORM pggit._require_size(p_param, octet_length(p_value::text), 262144,
        'at most 256 KiB of JSON: record summaries and tails, not whole listings or logs');
    RETURN p_value;
END
$$;

-- The token's sha256, after checking that it looks like a token (a malformed one is a bad
-- parameter; a well-formed wrong one simply matches nothing). Never echoes the value.
DROP FUNCTION IF EXISTS pggit._require_token(bigint);
CREATE OR REPLACE FUNCTION pggit._token_hash(p_claim_token text) RETURNS bytea
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF p_claim_token IS NULL OR p_claim_token !~ '^[0-9a-f]{64}$' THEN
        PERFORM pggit._invalid('p_claim_token',
            CASE WHEN p_claim_token IS NULL THEN 'must not be NULL' ELSE 'is not a claim token' END,
            'the claim_token (64 hex digits) that claim_backup_job returned to this login');
    END IF;
    RETURN sha256(convert_to(p_claim_token, 'UTF8'));
END
$$;

-- The claim functions return the secret token as text now.
DROP FUNCTION IF EXISTS pggit.claim_backup_job(text, text[], integer);
DROP FUNCTION IF EXISTS pggit.get_next_backup_job(text);
DROP FUNCTION IF EXISTS pggit._claim_job(text, text[], integer, text);
ALTER TYPE pggit.claimed_job ALTER ATTRIBUTE claim_token TYPE text;

-- Claims the next runnable job: by priority (lower first), then fresh before retries, then age.
-- One candidate row is locked at a time (SKIP LOCKED), so concurrent claimers each get a row
-- instead of one claimer holding a batch. Targets that already have a holder are skipped; the
-- unique index on held targets settles the race where two claims pass that check at once.
-- p_via records how the claim was made ('worker' with a token, 'guide' without one).
-- The token: sha256 over two random UUIDs (gen_random_uuid uses the server's strong random
-- source; 244 random bits), as 64 hex digits. Only its hash is written.
CREATE FUNCTION pggit._claim_job(
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
               AND (j.status = 'queued' OR (j.status = 'failed' AND j.attempts < j.max_attempts))
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

-- The workers' claim: returns the structured spec and the secret token every later call needs.
-- The token is returned here once; keep it in memory, never log it.
CREATE FUNCTION pggit.claim_backup_job(
    p_worker_id     text,
    p_tools         text[]  DEFAULT NULL,
    p_lease_seconds integer DEFAULT 60
) RETURNS SETOF pggit.claimed_job
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
    SELECT * FROM pggit._claim_job(p_worker_id, p_tools, p_lease_seconds, 'worker')
$$;

-- The guide's claim, for psql users and older listeners: same rows, with an hour's lease. No
-- token: the guide's complete_backup_job / fail_backup_job act on it by job id, for this login only.
CREATE FUNCTION pggit.get_next_backup_job(
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
-- deleted, or never this login's): the worker must stop the tool and report nothing. This is
-- the one cheap query a worker runs every heartbeat.
DROP FUNCTION IF EXISTS pggit.heartbeat_backup_job(uuid, bigint, integer);
CREATE FUNCTION pggit.heartbeat_backup_job(
    p_job_id        uuid,
    p_claim_token   text,
    p_lease_seconds integer DEFAULT 60
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
DECLARE
    v_hash bytea := pggit._token_hash(p_claim_token);
BEGIN
    PERFORM pggit._require_lease(p_lease_seconds);
    UPDATE pggit.backup_jobs j
       SET lease_expires_at = now() + make_interval(secs => p_lease_seconds), heartbeat_at = now()
     WHERE j.job_id = p_job_id AND j.status = 'running'
       AND j.claim_secret_sha256 = v_hash AND j.claimed_by = session_user;
    RETURN FOUND;
END
$$;

-- Completes a claimed job and its backup in one transaction, recording what the tool produced.
-- p_backup: {"backup_size", "compressed_size", "compression_type", "checksum", "location",
-- "verified": true when the output was read back, "backup_type" when the tool made another kind
-- than asked, "metadata": {...}}; p_result: exit code,
-- duration, output tail... as the worker measured them. For a restore drill, p_backup's
-- metadata is the drill's report and the tested backup is marked restore-tested.
DROP FUNCTION IF EXISTS pggit.finish_backup_job(uuid, bigint, text, jsonb, jsonb);
CREATE FUNCTION pggit.finish_backup_job(
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
-- Without a token (the guide's call) it acts only on a claim this login made the guide's way.
-- A failure no retry can fix (invalid parameters, a command not allowed) uses up the remaining
-- attempts at once, so the guide's `attempts >= max_attempts` still finds it.
DROP FUNCTION IF EXISTS pggit._fail_job(uuid, bigint, text, boolean, integer, integer, jsonb);
CREATE FUNCTION pggit._fail_job(
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
           next_retry_at = CASE WHEN p_retryable AND j.attempts < j.max_attempts
                                THEN now() + make_interval(secs => least(p_max_delay::float8,
                                         p_base_delay * power(2::float8, greatest(j.attempts - 1, 0))))
                           END,
           completed_at = CASE WHEN p_retryable AND j.attempts < j.max_attempts THEN NULL ELSE now() END
     WHERE j.job_id = p_job_id AND j.status = 'running' AND j.claimed_by = session_user
       AND (CASE WHEN p_token_hash IS NULL THEN j.claimed_via = 'guide' ELSE j.claim_secret_sha256 = p_token_hash END)
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

DROP FUNCTION IF EXISTS pggit.fail_claimed_backup_job(uuid, bigint, text, boolean, integer, integer, jsonb);
CREATE FUNCTION pggit.fail_claimed_backup_job(
    p_job_id      uuid,
    p_claim_token text,
    p_error       text,
    p_retryable   boolean DEFAULT true,
    p_base_delay  integer DEFAULT 300,
    p_max_delay   integer DEFAULT 21600,
    p_result      jsonb   DEFAULT '{}'
) RETURNS text
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
    SELECT pggit._fail_job(p_job_id, pggit._token_hash(p_claim_token), p_error, coalesce(p_retryable, true),
                           p_base_delay, p_max_delay, p_result)
$$;

-- The guide's completion, for psql users: no token, so it acts only on a job this login
-- claimed with get_next_backup_job. p_output may be left out (the original's default).
DROP FUNCTION IF EXISTS pggit.complete_backup_job(uuid, text);
CREATE FUNCTION pggit.complete_backup_job(
    p_job_id UUID,
    p_output TEXT DEFAULT NULL
) RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
BEGIN
    PERFORM pggit._require_output_size('p_output', p_output);
    UPDATE pggit.backup_jobs j
       SET status = 'completed', completed_at = now(), lease_expires_at = NULL, last_error = NULL,
           output = p_output
     WHERE j.job_id = p_job_id AND j.status = 'running' AND j.claimed_via = 'guide'
       AND j.claimed_by = session_user;
    RETURN FOUND;
END
$$;

-- Hands a claimed job back without spending an attempt (the service is stopping).
DROP FUNCTION IF EXISTS pggit.release_backup_job(uuid, bigint, text);
CREATE FUNCTION pggit.release_backup_job(
    p_job_id      uuid,
    p_claim_token text,
    p_reason      text DEFAULT 'handed back by its worker'
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
DECLARE
    v_hash bytea := pggit._token_hash(p_claim_token);
BEGIN
    UPDATE pggit.backup_jobs j
       SET status = 'queued', attempts = greatest(j.attempts - 1, 0), locked_by = NULL,
           lease_expires_at = NULL, started_at = NULL, next_retry_at = NULL,
           result = jsonb_build_object('released', left(coalesce(p_reason, ''), 1024), 'released_at', now())
     WHERE j.job_id = p_job_id AND j.status = 'running'
       AND j.claim_secret_sha256 = v_hash AND j.claimed_by = session_user;
    RETURN FOUND;
END
$$;

-- After a cancelled job's tool is stopped, its worker frees the job's target (the lease it
-- kept). Only the claim's own login and token may: otherwise another login could free the
-- target while the tool still runs, and a second backup of the same target would start.
DROP FUNCTION IF EXISTS pggit.abandon_backup_job(uuid, bigint);
CREATE FUNCTION pggit.abandon_backup_job(
    p_job_id      uuid,
    p_claim_token text
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
DECLARE
    v_hash bytea := pggit._token_hash(p_claim_token);
BEGIN
    UPDATE pggit.backup_jobs j SET lease_expires_at = NULL
     WHERE j.job_id = p_job_id AND j.claim_secret_sha256 = v_hash AND j.claimed_by = session_user
       AND j.status <> 'running' AND j.lease_expires_at IS NOT NULL;
    RETURN FOUND;
END
$$;

-- What the database holds for a claim: the job's status when (job, token, login) are those of
-- its latest claim, else NULL. A worker asks this after a report whose commit it could not see
-- (the connection broke): it reads, it never changes anything.
CREATE FUNCTION pggit.claimed_job_status(
    p_job_id      uuid,
    p_claim_token text
) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT j.status FROM pggit.backup_jobs j
     WHERE j.job_id = p_job_id AND j.claim_secret_sha256 = pggit._token_hash(p_claim_token)
       AND j.claimed_by = session_user
$$;

-- Returns the running jobs of a worker known to be dead (its supervisor reaped it) to the queue
-- at once instead of waiting for the lease: called by the worker that replaces it, under the
-- same worker id and login, before it claims anything. Counts the attempt, like a rescue.
-- A worker id is a free string, so it only selects among the calling login's own claims;
-- a member of pggit_backup_admin may release any login's.
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
           next_retry_at = CASE WHEN j.attempts < j.max_attempts THEN now() END,
           completed_at = CASE WHEN j.attempts < j.max_attempts THEN NULL ELSE now() END
     WHERE j.status = 'running' AND j.locked_by = p_worker_id AND (v_any OR j.claimed_by = session_user)
    RETURNING j.job_id, CASE WHEN j.attempts < j.max_attempts THEN 'will_retry' ELSE 'permanently_failed' END;
    UPDATE pggit.backup_jobs j SET lease_expires_at = NULL
     WHERE j.status <> 'running' AND j.locked_by = p_worker_id AND j.lease_expires_at IS NOT NULL
       AND (v_any OR j.claimed_by = session_user);
END
$$;

-- Nothing for PUBLIC (CREATE FUNCTION grants EXECUTE to PUBLIC), then the worker's own.
REVOKE ALL ON FUNCTION pggit._require_size(text, bigint, integer, text),
                       pggit._require_output_size(text, text),
                       pggit._require_json_size(text, jsonb),
                       pggit._token_hash(text),
                       pggit._claim_job(text, text[], integer, text),
                       pggit.claim_backup_job(text, text[], integer),
                       pggit.get_next_backup_job(text),
                       pggit.heartbeat_backup_job(uuid, text, integer),
                       pggit.finish_backup_job(uuid, text, text, jsonb, jsonb),
                       pggit._fail_job(uuid, bytea, text, boolean, integer, integer, jsonb),
                       pggit.fail_backup_job(uuid, text, integer),
                       pggit.fail_claimed_backup_job(uuid, text, text, boolean, integer, integer, jsonb),
                       pggit.complete_backup_job(uuid, text),
                       pggit.release_backup_job(uuid, text, text),
                       pggit.abandon_backup_job(uuid, text),
                       pggit.claimed_job_status(uuid, text),
                       pggit.release_worker_backup_jobs(text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.claim_backup_job(text, text[], integer),
                          pggit.get_next_backup_job(text),
                          pggit.heartbeat_backup_job(uuid, text, integer),
                          pggit.finish_backup_job(uuid, text, text, jsonb, jsonb),
                          pggit.fail_backup_job(uuid, text, integer),
                          pggit.fail_claimed_backup_job(uuid, text, text, boolean, integer, integer, jsonb),
                          pggit.complete_backup_job(uuid, text),
                          pggit.release_backup_job(uuid, text, text),
                          pggit.abandon_backup_job(uuid, text),
                          pggit.claimed_job_status(uuid, text),
                          pggit.release_worker_backup_jobs(text, text)
    TO pggit_backup_worker;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (9, '009_claims')
    ON CONFLICT (version) DO NOTHING;
