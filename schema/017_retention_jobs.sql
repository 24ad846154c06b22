-- 017: retention runs from the workers as a queued job per target (issue 10). A retention job
-- asks "apply this target's rules now"; it is enqueued after each successful backup of the
-- target, by the target's own schedule (one job per target and slot, whichever hosts carry it),
-- or by `pggit-supervisor retention`, and claimed by an idle worker whose config retains that
-- target, which applies its own rules under the target's remover lock (016). Requests coalesce:
-- a target has at most one queued job, so a burst of backups costs one run. These jobs live in
-- a table of their own, not in backup_jobs: they belong to no backup, are no backup's history,
-- and the guide's queue views and statistics count backups.

CREATE TABLE IF NOT EXISTS pggit.maintenance_jobs (
    job_id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind                text NOT NULL CHECK (kind IN ('retention')),
    -- as _require_retention_target normalises it; target_key is its text, the coalescing key
    target              jsonb NOT NULL,
    target_key          text NOT NULL,
    reason              text NOT NULL CHECK (reason IN ('backup', 'schedule', 'requested')),
    -- the backup that asked for it, or the schedule slot
    backup_id           uuid,
    slot_time           timestamptz,
    status              text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    enqueued_by         text NOT NULL DEFAULT session_user,
    enqueued_at         timestamptz NOT NULL DEFAULT now(),
    run_after           timestamptz NOT NULL DEFAULT now(),
    attempts            integer NOT NULL DEFAULT 0,
    claimed_by          text,
    claim_secret_sha256 bytea,
    worker_id           text,
    started_at          timestamptz,
    lease_expires_at    timestamptz,
    finished_at         timestamptz,
    summary             jsonb,
    error               text,
    CHECK ((status = 'running') = (lease_expires_at IS NOT NULL)),
    CHECK (reason <> 'schedule' OR slot_time IS NOT NULL)
);
-- one queued job per target (requests coalesce) and one job per target and schedule slot
CREATE UNIQUE INDEX IF NOT EXISTS maintenance_jobs_one_queued
    ON pggit.maintenance_jobs (kind, target_key) WHERE status = 'queued';
CREATE UNIQUE INDEX IF NOT EXISTS maintenance_jobs_one_per_slot
    ON pggit.maintenance_jobs (kind, target_key, slot_time) WHERE slot_time IS NOT NULL;
CREATE INDEX IF NOT EXISTS maintenance_jobs_ready
    ON pggit.maintenance_jobs (run_after) WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS maintenance_jobs_finished
    ON pggit.maintenance_jobs (finished_at) WHERE status IN ('completed', 'failed');

-- Written only through the functions below (their owner); readers see the view.
REVOKE ALL ON pggit.maintenance_jobs FROM PUBLIC;

-- Asks for a retention run of a target. Returns the job that will do it: the new one, the one
-- already queued for the target (a slot given is recorded on it when it has none), or the one
-- already made for that slot. A schedule slot is a whole minute no later than five minutes
-- from now (as 014's slots).
CREATE OR REPLACE FUNCTION pggit.enqueue_retention(
    p_target    jsonb,
    p_reason    text DEFAULT 'requested',
    p_slot_time timestamptz DEFAULT NULL,
    p_backup_id uuid DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_target jsonb := pggit._require_retention_target(p_target);
    v_key    text;
    v_job    uuid;
BEGIN
    PERFORM pggit._require_enum('p_reason', p_reason, ARRAY['backup', 'schedule', 'requested']);
    IF (p_reason = 'schedule') <> (p_slot_time IS NOT NULL) THEN
        PERFORM pggit._invalid('p_slot_time', 'is given exactly when p_reason is ''schedule''',
            'a slot time with p_reason ''schedule'', NULL otherwise');
    END IF;
    IF p_slot_time IS NOT NULL AND (p_slot_time <> date_trunc('minute', p_slot_time)
                                    OR p_slot_time > now() + interval '5 minutes') THEN
        PERFORM pggit._invalid('p_slot_time', format('%s is not a whole minute up to five minutes from now', p_slot_time),
            'the schedule slot, a whole minute, not in the future');
    END IF;
    IF p_backup_id IS NOT NULL AND p_reason <> 'backup' THEN
        PERFORM pggit._invalid('p_backup_id', 'is given only with p_reason ''backup''', 'NULL, or p_reason ''backup''');
    END IF;
    IF p_backup_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pggit.backups b WHERE b.backup_id = p_backup_id) THEN
        PERFORM pggit._invalid('p_backup_id', format('no backup %s', p_backup_id), 'a pggit.backups.backup_id, or NULL');
    END IF;
    v_key := v_target::text;
    INSERT INTO pggit.maintenance_jobs (kind, target, target_key, reason, backup_id, slot_time)
    VALUES ('retention', v_target, v_key, p_reason, p_backup_id, p_slot_time)
    ON CONFLICT DO NOTHING
    RETURNING job_id INTO v_job;
    IF v_job IS NOT NULL THEN
        RETURN v_job;
    END IF;
    IF p_slot_time IS NOT NULL THEN
        SELECT m.job_id INTO v_job FROM pggit.maintenance_jobs m
         WHERE m.kind = 'retention' AND m.target_key = v_key AND m.slot_time = p_slot_time;
        IF v_job IS NOT NULL THEN
            RETURN v_job;  -- this slot was enqueued already (by another host)
        END IF;
    END IF;
    -- coalesced into the job already queued; it carries the slot if it carries none, so a host
    -- ticking late does not make the same slot a second run; and it is ready now: a delay its
    -- last release gave it (another host held the target, or a worker login asked for a day)
    -- does not defer this request
    UPDATE pggit.maintenance_jobs m
       SET slot_time = coalesce(m.slot_time, p_slot_time), run_after = least(m.run_after, now())
     WHERE m.kind = 'retention' AND m.target_key = v_key AND m.status = 'queued'
    RETURNING m.job_id INTO v_job;
    RETURN v_job;  -- NULL only if that queued job was claimed in between: a run is under way
EXCEPTION WHEN unique_violation THEN
    -- the queued job took this slot in between: it is this slot's run
    RETURN (SELECT m.job_id FROM pggit.maintenance_jobs m
             WHERE m.kind = 'retention' AND m.target_key = v_key AND (m.slot_time = p_slot_time OR m.status = 'queued')
             ORDER BY m.enqueued_at DESC LIMIT 1);
END
$$;

-- A worker's targets (p_targets of the functions below: the targets its config retains), each
-- checked as _require_retention_target checks one, the error naming its place (p_targets[N]),
-- all of them before anything is written. Returns their keys (the normalised targets' text).
CREATE OR REPLACE FUNCTION pggit._require_retention_targets(p_targets jsonb) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_keys    text[] := '{}';
    v_each    jsonb;
    v_place   bigint;
    v_column  text;
    v_message text;
    v_hint    text;
BEGIN
    IF p_targets IS NULL OR jsonb_typeof(p_targets) <> 'array' OR jsonb_array_length(p_targets) > 1000 THEN
        PERFORM pggit._invalid('p_targets', 'must be a JSON array of at most 1000 targets', '[{"tool": ..., ...}, ...]');
    END IF;
    FOR v_each, v_place IN SELECT t.value, t.n - 1 FROM jsonb_array_elements(p_targets) WITH ORDINALITY t(value, n) LOOP
        BEGIN
            v_keys := v_keys || pggit._require_retention_target(v_each)::text;
        EXCEPTION WHEN invalid_parameter_value THEN
            GET STACKED DIAGNOSTICS v_column = COLUMN_NAME, v_message = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT;
            PERFORM pggit._invalid(format('p_targets[%s]%s', v_place, substr(v_column, length('p_target') + 1)),
                                   regexp_replace(v_message, '^pggit: invalid [^ ]*: ', ''), v_hint);
        END;
    END LOOP;
    RETURN v_keys;
END
$$;

-- After a backup job completed: a retention run of the backup's target, if that target is one
-- of p_targets (the caller's configured targets, as the config writes them). The target is the
-- one 015 counts the backup in (from its job's spec), so what triggers the run is what the run
-- decides over. NULL: not a target of the caller's, or the job made no backup of its own tool.
CREATE OR REPLACE FUNCTION pggit.enqueue_retention_after_backup(p_job_id uuid, p_targets jsonb) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_keys     text[] := pggit._require_retention_targets(p_targets);
    v_backup   uuid;
    v_identity jsonb;
BEGIN
    SELECT b.backup_id, pggit._retention_identity(b.backup_tool, pggit._retention_params(b.backup_id, b.backup_tool))
      INTO v_backup, v_identity
      FROM pggit.backup_jobs j JOIN pggit.backups b ON b.backup_id = j.backup_id
     WHERE j.job_id = p_job_id AND j.tool = b.backup_tool AND b.status = 'completed';
    IF v_identity IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_identity::text = ANY (v_keys) THEN
        RETURN pggit.enqueue_retention(v_identity, 'backup', NULL, v_backup);
    END IF;
    RETURN NULL;
END
$$;

CREATE TYPE pggit.claimed_maintenance_job AS (
    job_id      uuid,
    kind        text,
    target      jsonb,
    reason      text,
    attempts    integer,
    claim_token text,
    -- the claimed target's place in p_targets (0-based): whose rules the worker applies
    target_index integer
);

-- An idle worker's claim: the oldest ready retention job of one of p_targets (the targets its
-- config retains: it applies its own rules to them) whose target has no other job running, or
-- a running one whose lease expired (its worker died; the target's session lock went with it).
-- Returns the secret token the later calls need, once; only its hash is stored.
CREATE OR REPLACE FUNCTION pggit.claim_maintenance_job(
    p_worker_id     text,
    p_targets       jsonb,
    p_lease_seconds integer DEFAULT 300
) RETURNS SETOF pggit.claimed_maintenance_job
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_keys  text[];
    v_job   uuid;
    v_token text;
BEGIN
    PERFORM pggit._require_worker_id(p_worker_id);
    PERFORM pggit._require_lease(p_lease_seconds);
    v_keys := pggit._require_retention_targets(p_targets);
    -- a job whose worker was lost this often (it may be what kills them) waits for a person
    UPDATE pggit.maintenance_jobs m
       SET status = 'failed', finished_at = now(), lease_expires_at = NULL, claim_secret_sha256 = NULL,
           error = format('its worker was lost %s times while running it (last: %s)', m.attempts, m.worker_id)
     WHERE m.status = 'running' AND m.lease_expires_at < now() AND m.attempts >= 5 AND m.target_key = ANY (v_keys);
    SELECT m.job_id INTO v_job
      FROM pggit.maintenance_jobs m
     WHERE m.kind = 'retention' AND m.target_key = ANY (v_keys) AND m.run_after <= now()
       AND (m.status = 'queued' OR (m.status = 'running' AND m.lease_expires_at < now()))
       -- nor while another job of the target is running, even one whose lease expired: that
       -- one is claimed again first (it is the older); a claim racing for it skips its locked
       -- row and must not take the queued job beside it
       AND NOT EXISTS (SELECT 1 FROM pggit.maintenance_jobs r
                        WHERE r.kind = m.kind AND r.target_key = m.target_key AND r.job_id <> m.job_id
                          AND r.status = 'running')
     ORDER BY m.run_after, m.enqueued_at, m.job_id
     LIMIT 1
       FOR UPDATE OF m SKIP LOCKED;
    IF v_job IS NULL THEN
        RETURN;
    END IF;
    v_token := encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex');
    RETURN QUERY
    UPDATE pggit.maintenance_jobs m
       SET status = 'running', attempts = m.attempts + 1, claimed_by = session_user,
           claim_secret_sha256 = sha256(convert_to(v_token, 'UTF8')), worker_id = p_worker_id,
           started_at = now(), lease_expires_at = now() + make_interval(secs => p_lease_seconds),
           finished_at = NULL, error = NULL
     WHERE m.job_id = v_job
    RETURNING m.job_id, m.kind, m.target, m.reason, m.attempts, v_token, array_position(v_keys, m.target_key) - 1;
END
$$;

-- The row of a claim, if it is still this login's with this token: the guard every later call runs.
CREATE OR REPLACE FUNCTION pggit._my_maintenance_job(p_job_id uuid, p_claim_token text) RETURNS uuid
LANGUAGE sql SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT m.job_id FROM pggit.maintenance_jobs m
     WHERE m.job_id = p_job_id AND m.status = 'running' AND m.claimed_by = session_user
       AND m.claim_secret_sha256 = pggit._token_hash(p_claim_token)
       FOR UPDATE
$$;

-- Renews the lease; false: the job is no longer this claim's (it expired and another worker took it).
CREATE OR REPLACE FUNCTION pggit.heartbeat_maintenance_job(p_job_id uuid, p_claim_token text, p_lease_seconds integer DEFAULT 300)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
BEGIN
    PERFORM pggit._require_lease(p_lease_seconds);
    UPDATE pggit.maintenance_jobs m SET lease_expires_at = now() + make_interval(secs => p_lease_seconds)
     WHERE m.job_id = pggit._my_maintenance_job(p_job_id, p_claim_token);
    RETURN FOUND;
END
$$;

-- The job ended: completed with what it did (p_error NULL), or failed with p_error. A failed
-- retention run is not retried by itself: the next backup, slot or request asks again (and a
-- removal that failed stays pending on its expiration, 016). False: not this claim's any more.
CREATE OR REPLACE FUNCTION pggit.finish_maintenance_job(p_job_id uuid, p_claim_token text, p_summary jsonb, p_error text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
BEGIN
    IF p_summary IS NOT NULL AND (jsonb_typeof(p_summary) <> 'object' OR octet_length(p_summary::text) > 262144) THEN
        PERFORM pggit._invalid('p_summary', 'must be a JSON object of at most 256 KiB', '{"marked": ..., "removed": ...}');
    END IF;
    IF octet_length(p_error) > 65536 THEN
        PERFORM pggit._invalid('p_error', 'is longer than 64 KiB', 'a message of at most 64 KiB');
    END IF;
    IF btrim(p_error) = '' THEN
        PERFORM pggit._invalid('p_error', 'must not be empty', 'NULL when the run completed, else what went wrong');
    END IF;
    UPDATE pggit.maintenance_jobs m
       SET status = CASE WHEN p_error IS NULL THEN 'completed' ELSE 'failed' END,
           summary = p_summary, error = p_error, finished_at = now(), lease_expires_at = NULL,
           claim_secret_sha256 = NULL
     WHERE m.job_id = pggit._my_maintenance_job(p_job_id, p_claim_token);
    RETURN FOUND;
END
$$;

-- Back to the queue without spending anything: the worker stops, or another host holds the
-- target's remover lock (p_delay_seconds later, then). If the target has been queued again in
-- the meantime, this job ends instead, as superseded by that one (a target queues once).
CREATE OR REPLACE FUNCTION pggit.release_maintenance_job(p_job_id uuid, p_claim_token text, p_reason text,
                                                         p_delay_seconds integer DEFAULT 0)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_job uuid := pggit._my_maintenance_job(p_job_id, p_claim_token);
    v_key text;
BEGIN
    IF p_delay_seconds IS NULL OR p_delay_seconds NOT BETWEEN 0 AND 86400 THEN
        PERFORM pggit._invalid('p_delay_seconds', format('%s is out of range', coalesce(p_delay_seconds::text, 'NULL')),
            '0 to 86400 seconds');
    END IF;
    IF v_job IS NULL THEN
        RETURN false;
    END IF;
    SELECT m.target_key INTO v_key FROM pggit.maintenance_jobs m WHERE m.job_id = v_job;
    IF NOT EXISTS (SELECT 1 FROM pggit.maintenance_jobs q
                    WHERE q.kind = 'retention' AND q.target_key = v_key AND q.status = 'queued') THEN
        BEGIN
            UPDATE pggit.maintenance_jobs m
               SET status = 'queued', lease_expires_at = NULL, claim_secret_sha256 = NULL, claimed_by = NULL,
                   worker_id = NULL, attempts = greatest(m.attempts - 1, 0),
                   run_after = now() + make_interval(secs => p_delay_seconds), error = left(p_reason, 500)
             WHERE m.job_id = v_job;
            RETURN true;
        EXCEPTION WHEN unique_violation THEN
            -- a request committed after the check above (READ COMMITTED): it is the queued one
            NULL;
        END;
    END IF;
    UPDATE pggit.maintenance_jobs m
       SET status = 'completed', finished_at = now(), lease_expires_at = NULL, claim_secret_sha256 = NULL,
           summary = jsonb_build_object('superseded', true, 'reason', left(p_reason, 500))
     WHERE m.job_id = v_job;
    RETURN true;
END
$$;

-- Who holds a target's remover lock (016), for the job put back because it is taken: any login
-- that can connect may take any advisory lock, so the holder is not necessarily a host applying
-- the target (one with no pggit role can keep its retention from ever running). What pg_locks
-- and pg_stat_activity show every login anyway: login, pid, application_name. NULL: not held.
CREATE OR REPLACE FUNCTION pggit.retention_target_holder(p_target jsonb) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
    SELECT format('login %s (pid %s, application_name %s)', quote_ident(a.usename), a.pid,
                  quote_literal(left(regexp_replace(a.application_name, '[[:cntrl:]]', '?', 'g'), 64)))
      FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
       AND ((l.classid::bigint << 32) | l.objid::bigint)
           = hashtextextended('pggit-retention-run:' || pggit._require_retention_target(p_target)::text, 0)
     ORDER BY a.backend_start
     LIMIT 1
$$;

-- Finished jobs of both tables older than the age, at most one pruner at a time (a second one
-- returns NULL at once rather than wait on the first's row locks), and the notifications that
-- ended (each delivery delivered or dead-lettered) that long ago: one still owed to anybody
-- stays, however old (their tables are 018's, which the same install adds next). Returns how many went.
CREATE OR REPLACE FUNCTION pggit.prune_finished_jobs(p_older_than_seconds integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_jobs bigint;
    v_maintenance bigint;
    v_events bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('pggit-prune-jobs', 0)) THEN
        RETURN NULL;
    END IF;
    v_jobs := pggit.prune_backup_jobs(p_older_than_seconds);  -- checks the range
    DELETE FROM pggit.maintenance_jobs m
     WHERE m.status IN ('completed', 'failed')
       AND m.finished_at < now() - make_interval(secs => p_older_than_seconds);
    GET DIAGNOSTICS v_maintenance = ROW_COUNT;
    DELETE FROM pggit.notification_events e
     WHERE e.created_at < now() - make_interval(secs => p_older_than_seconds)
       AND NOT EXISTS (SELECT 1 FROM pggit.notification_deliveries d
                        WHERE d.event_id = e.event_id AND d.delivered_at IS NULL AND d.dead_at IS NULL
                           OR d.event_id = e.event_id
                              AND coalesce(d.delivered_at, d.dead_at) >= now() - make_interval(secs => p_older_than_seconds));
    GET DIAGNOSTICS v_events = ROW_COUNT;
    RETURN v_jobs + v_maintenance + v_events;
END
$$;

-- What the retention jobs are doing, for people and monitoring (no claim secrets).
CREATE OR REPLACE VIEW pggit.maintenance_job_queue AS
SELECT m.job_id, m.kind, m.target, m.reason, m.backup_id, m.slot_time, m.status, m.enqueued_by, m.enqueued_at,
       m.run_after, m.attempts, m.worker_id, m.claimed_by, m.started_at, m.lease_expires_at, m.finished_at,
       m.summary, m.error
  FROM pggit.maintenance_jobs m;

REVOKE ALL ON FUNCTION pggit._require_retention_targets(jsonb),
                       pggit.enqueue_retention(jsonb, text, timestamptz, uuid),
                       pggit.enqueue_retention_after_backup(uuid, jsonb),
                       pggit.claim_maintenance_job(text, jsonb, integer),
                       pggit._my_maintenance_job(uuid, text),
                       pggit.heartbeat_maintenance_job(uuid, text, integer),
                       pggit.finish_maintenance_job(uuid, text, jsonb, text),
                       pggit.release_maintenance_job(uuid, text, text, integer),
                       pggit.retention_target_holder(jsonb),
                       pggit.prune_finished_jobs(integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.enqueue_retention(jsonb, text, timestamptz, uuid) TO pggit_backup_operator, pggit_backup_worker;
GRANT EXECUTE ON FUNCTION pggit.enqueue_retention_after_backup(uuid, jsonb),
                          pggit.claim_maintenance_job(text, jsonb, integer),
                          pggit.heartbeat_maintenance_job(uuid, text, integer),
                          pggit.finish_maintenance_job(uuid, text, jsonb, text),
                          pggit.release_maintenance_job(uuid, text, text, integer),
                          pggit.retention_target_holder(jsonb),
                          pggit.prune_finished_jobs(integer)
    TO pggit_backup_worker;
REVOKE ALL ON pggit.maintenance_job_queue FROM PUBLIC;
GRANT SELECT ON pggit.maintenance_job_queue TO pggit_backup_reader;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (17, '017_retention_jobs')
    ON CONFLICT (version) DO NOTHING;
