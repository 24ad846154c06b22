-- 018: notifications that cannot be lost (issue 11). Until now the worker posted a job's webhook
-- once, after recording the job's end, and dropped it on any error: a crash between the two, an
-- endpoint down for a minute or a slow one lost it. Now the notification is written here, in the
-- transaction that ends the job (a deferred trigger on backup_jobs, so it runs at that
-- transaction's commit and sees the backup row the finish function updated after the job row),
-- and the workers deliver it later from their idle time: claimed with FOR UPDATE SKIP LOCKED
-- under a lease (a killed worker's claim comes back), recorded with a guarded UPDATE, retried
-- with capped exponential backoff and jitter, dead-lettered after the configured attempts.
-- Whether a notification is owed is decided here, once: the backup's own webhook_url for
-- completed (notify_on_success) and permanently failed (notify_on_failure) jobs, as the guide
-- stores them in the job's spec (004), plus the endpoints of the supervisors' configs
-- (notifications.endpoints), which the workers register here with the events each wants.

-- Endpoints from the config (notifications.endpoints), registered by the workers of each host.
-- One row per name: the last host to register a name sets its URL and events; a host removes
-- only the names it registered itself, so hosts sharing a database should carry the same list.
-- A host is spoken for only by the login its live workers record themselves with (019).
CREATE TABLE IF NOT EXISTS pggit.notification_endpoints (
    endpoint_name    text PRIMARY KEY
        CHECK (endpoint_name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' AND endpoint_name <> 'webhook_url'),
    url              text NOT NULL CHECK (url ~* '^https?://[^[:space:][:cntrl:]]+$' AND length(url) <= 2048),
    events           text[] NOT NULL CHECK (cardinality(events) > 0),
    registered_by    text NOT NULL,
    registered_login text NOT NULL DEFAULT session_user,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per job ending that somebody is owed a notification of. job_id and backup_id are no
-- foreign keys: pruning a job, or deleting a backup, must not take its undelivered notice along.
CREATE TABLE IF NOT EXISTS pggit.notification_events (
    event_id   uuid PRIMARY KEY,
    job_id     uuid NOT NULL,
    backup_id  uuid NOT NULL,
    event      text NOT NULL CHECK (event IN ('completed', 'will_retry', 'permanently_failed', 'cancelled')),
    payload    jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notification_events_job_idx ON pggit.notification_events (job_id);

-- One row per event and endpoint ('webhook_url': the backup's own). A claim records the login
-- and the sha256 of a random token it returned once; only that login with that token may record
-- the attempt, and only while nobody has claimed the row again since.
CREATE TABLE IF NOT EXISTS pggit.notification_deliveries (
    delivery_id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id            uuid NOT NULL REFERENCES pggit.notification_events ON DELETE CASCADE,
    endpoint            text NOT NULL,
    url                 text NOT NULL,
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    last_error          text,
    claimed_by          text,
    claimed_worker      text,
    claim_secret_sha256 bytea,
    lease_expires_at    timestamptz,
    delivered_at        timestamptz,
    dead_at             timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint),
    CHECK (delivered_at IS NULL OR dead_at IS NULL)
);
CREATE INDEX IF NOT EXISTS notification_deliveries_due_idx
    ON pggit.notification_deliveries (next_attempt_at) WHERE delivered_at IS NULL AND dead_at IS NULL;

-- The event a job's new state is, or NULL when it is none (queued, running).
CREATE OR REPLACE FUNCTION pggit._notification_event(p_status text, p_attempts integer, p_max_attempts integer)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT CASE WHEN p_status IN ('completed', 'cancelled') THEN p_status
                WHEN p_status = 'failed' THEN pggit.backup_job_state(p_status, p_attempts, p_max_attempts)
           END
$$;

-- The rule of the guide's options (README "Options"): webhook_url is called on success when
-- notify_on_success is true, on a permanent failure when notify_on_failure is (its default when
-- webhook_url is set); never for a failure that will be retried, nor for a cancel.
CREATE OR REPLACE FUNCTION pggit._webhook_owed(p_spec jsonb, p_event text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT coalesce(p_spec #>> '{notify,webhook_url}', '') <> ''
       AND CASE p_event
               WHEN 'completed' THEN coalesce(p_spec #>> '{notify,on_success}', 'false') = 'true'
               WHEN 'permanently_failed' THEN coalesce(p_spec #>> '{notify,on_failure}', 'false') = 'true'
               ELSE false
           END
$$;

-- What a receiver is sent, built from the rows as the ending transaction left them.
CREATE OR REPLACE FUNCTION pggit._notification_payload(p_event_id uuid, p_event text, p_job pggit.backup_jobs)
RETURNS jsonb LANGUAGE sql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT jsonb_build_object(
        'event_id', p_event_id,
        'event', p_event,
        'job_id', p_job.job_id,
        'backup_id', p_job.backup_id,
        'backup_name', b.backup_name,
        'backup_type', b.backup_type,
        'tool', p_job.tool,
        'target', p_job.target,
        'branch', b.branch_name,
        'commit', b.commit_hash,
        'status', p_event,
        'backup_status', b.status,
        'attempt', p_job.attempts,
        'max_attempts', p_job.max_attempts,
        'backup_size', b.backup_size,
        'compressed_size', b.compressed_size,
        'started_at', p_job.started_at,
        'completed_at', p_job.completed_at,
        'duration_seconds', CASE WHEN p_job.started_at IS NOT NULL THEN
            round(extract(epoch FROM coalesce(p_job.completed_at, now()) - p_job.started_at)::numeric, 3) END,
        'verified', b.verified_at IS NOT NULL,
        'verified_at', b.verified_at,
        'error', p_job.last_error,
        'occurred_at', now())
      FROM pggit.backups b WHERE b.backup_id = p_job.backup_id
$$;

-- The outbox write. Deferred to the commit of the transaction that ended the job: the finish
-- function updates the backup (sizes, verification) after the job row, and this must see both.
-- NEW is the job row as that UPDATE left it (its state then, even if it changed again since).
CREATE OR REPLACE FUNCTION pggit._backup_jobs_outbox() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_event    text := pggit._notification_event(NEW.status, NEW.attempts, NEW.max_attempts);
    v_webhook  boolean;
    v_event_id uuid := gen_random_uuid();
BEGIN
    IF v_event IS NULL THEN
        RETURN NULL;
    END IF;
    v_webhook := pggit._webhook_owed(NEW.spec, v_event);
    IF NOT v_webhook AND NOT EXISTS (SELECT 1 FROM pggit.notification_endpoints e WHERE v_event = ANY (e.events)) THEN
        RETURN NULL;
    END IF;
    INSERT INTO pggit.notification_events (event_id, job_id, backup_id, event, payload)
    VALUES (v_event_id, NEW.job_id, NEW.backup_id, v_event,
            coalesce(pggit._notification_payload(v_event_id, v_event, NEW),
                     jsonb_build_object('event_id', v_event_id, 'event', v_event, 'job_id', NEW.job_id,
                                        'backup_id', NEW.backup_id, 'tool', NEW.tool, 'status', v_event)));
    IF v_webhook THEN
        INSERT INTO pggit.notification_deliveries (event_id, endpoint, url)
        VALUES (v_event_id, 'webhook_url', NEW.spec #>> '{notify,webhook_url}');
    END IF;
    INSERT INTO pggit.notification_deliveries (event_id, endpoint, url)
    SELECT v_event_id, e.endpoint_name, e.url FROM pggit.notification_endpoints e WHERE v_event = ANY (e.events);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS backup_jobs_outbox ON pggit.backup_jobs;
CREATE CONSTRAINT TRIGGER backup_jobs_outbox
    AFTER UPDATE OF status ON pggit.backup_jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION pggit._backup_jobs_outbox();

-- The delivery's rule, spelled once: a delivery that made p_limit attempts makes no more (the
-- job's own retry rule is pggit.backup_job_state's, and is another).
CREATE OR REPLACE FUNCTION pggit._delivery_used_up(p_attempts integer, p_limit integer) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT p_attempts >= p_limit
$$;

CREATE OR REPLACE FUNCTION pggit._require_count(p_param text, p_value integer, p_low integer, p_high integer,
                                               p_hint text)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF p_value IS NULL OR p_value < p_low OR p_value > p_high THEN
        PERFORM pggit._invalid(p_param, format('%s is out of range', coalesce(p_value::text, 'NULL')),
            format('%s from %s to %s', p_hint, p_low, p_high));
    END IF;
    RETURN p_value;
END
$$;

-- A host's notifications.endpoints, as its workers send them: [{"name", "url", "events"}].
-- Replaces what this host registered before (a name it no longer lists goes); returns how many
-- endpoints the host carries. Checked whole before anything is written.
CREATE OR REPLACE FUNCTION pggit.register_notification_endpoints(p_host text, p_endpoints jsonb)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    c_events constant text[] := ARRAY['completed', 'will_retry', 'permanently_failed', 'cancelled'];
    v_entry jsonb;
    v_event text;
    v_names text[] := '{}';
BEGIN
    PERFORM pggit._require_text('p_host', p_host, '^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,62}$', 63,
        'the worker_id of the host (1-63 letters, digits or _.:@-)');
    -- only the login whose workers carry the host speaks for it (019): another host's login
    -- naming it would drop or narrow its endpoints, and job endings would be owed nobody
    PERFORM pggit._require_worker_host_login(p_host);
    IF p_endpoints IS NULL OR jsonb_typeof(p_endpoints) <> 'array' THEN
        PERFORM pggit._invalid('p_endpoints', 'must be a JSON array', '[{"name": ..., "url": ..., "events": [...]}]');
    END IF;
    PERFORM pggit._require_count('p_endpoints', jsonb_array_length(p_endpoints), 0, 100, 'a number of endpoints');
    FOR v_entry IN SELECT e FROM jsonb_array_elements(p_endpoints) e LOOP
        IF jsonb_typeof(v_entry) <> 'object' THEN
            PERFORM pggit._invalid('p_endpoints[]', 'must be a JSON object', '{"name": ..., "url": ..., "events": [...]}');
        END IF;
        PERFORM pggit._require_options('p_endpoints[]', v_entry, ARRAY['name', 'url', 'events']);
        PERFORM pggit._require_text('p_endpoints[].name', v_entry ->> 'name', '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$', 63,
            '1-63 letters, digits or _.- starting with a letter or digit, not webhook_url');
        IF v_entry ->> 'name' = 'webhook_url' OR v_entry ->> 'name' = ANY (v_names) THEN
            PERFORM pggit._invalid('p_endpoints[].name', format('%s is taken', pggit._show(v_entry ->> 'name')),
                'each name once; webhook_url is the backup''s own');
        END IF;
        v_names := v_names || (v_entry ->> 'name');
        PERFORM pggit._require_text('p_endpoints[].url', v_entry ->> 'url',
            '^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~:/?#@!$&()*+,;=%-]*)?$', 2048,
            'an http:// or https:// URL of at most 2048 characters, without spaces or quotes (as webhook_url)');
        IF jsonb_typeof(v_entry -> 'events') IS DISTINCT FROM 'array' OR jsonb_array_length(v_entry -> 'events') = 0 THEN
            PERFORM pggit._invalid('p_endpoints[].events', 'must be a non-empty JSON array',
                'some of: ' || array_to_string(c_events, ', '));
        END IF;
        FOR v_event IN SELECT jsonb_array_elements_text(v_entry -> 'events') LOOP
            PERFORM pggit._require_enum('p_endpoints[].events', v_event, c_events);
        END LOOP;
    END LOOP;

    DELETE FROM pggit.notification_endpoints e WHERE e.registered_by = p_host AND NOT e.endpoint_name = ANY (v_names);
    INSERT INTO pggit.notification_endpoints AS e (endpoint_name, url, events, registered_by)
    SELECT x ->> 'name', x ->> 'url', ARRAY(SELECT DISTINCT jsonb_array_elements_text(x -> 'events') ORDER BY 1), p_host
      FROM jsonb_array_elements(p_endpoints) x
    ON CONFLICT (endpoint_name) DO UPDATE
       SET url = EXCLUDED.url, events = EXCLUDED.events, registered_by = EXCLUDED.registered_by,
           registered_login = session_user, updated_at = now()
     WHERE (e.url, e.events, e.registered_by, e.registered_login)
           IS DISTINCT FROM (EXCLUDED.url, EXCLUDED.events, EXCLUDED.registered_by, session_user);
    RETURN cardinality(v_names);
END
$$;

-- Claims up to p_limit due deliveries for p_lease_seconds: a worker killed while posting leaves
-- a claim that comes back when its lease expires. A delivery whose attempts are used up (its
-- last claim expired unrecorded, or max_attempts was lowered) is dead-lettered here instead.
-- Each row's token is returned once, to the claimer; only its sha256 is kept.
CREATE OR REPLACE FUNCTION pggit.claim_notification_deliveries(
    p_worker_id     text,
    p_limit         integer DEFAULT 10,
    p_lease_seconds integer DEFAULT 60,
    p_max_attempts  integer DEFAULT 10
) RETURNS TABLE (delivery_id uuid, event_id uuid, endpoint text, url text, event text, payload jsonb,
                 attempt integer, claim_token text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
BEGIN
    PERFORM pggit._require_worker_id(p_worker_id);
    PERFORM pggit._require_count('p_limit', p_limit, 1, 100, 'deliveries per claim');
    PERFORM pggit._require_lease(p_lease_seconds);
    PERFORM pggit._require_count('p_max_attempts', p_max_attempts, 1, 1000, 'attempts');

    UPDATE pggit.notification_deliveries d
       SET dead_at = now(), lease_expires_at = NULL, claim_secret_sha256 = NULL,
           last_error = coalesce(d.last_error || '; ', '')
                        || format('%s of %s attempts used up', d.attempts, p_max_attempts)
     WHERE d.delivered_at IS NULL AND d.dead_at IS NULL AND pggit._delivery_used_up(d.attempts, p_max_attempts)
       AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now());

    RETURN QUERY
    WITH due AS (
        SELECT d.delivery_id AS id,
               encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex') AS token
          FROM pggit.notification_deliveries d
         WHERE d.delivered_at IS NULL AND d.dead_at IS NULL AND d.next_attempt_at <= now()
           AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
           AND NOT pggit._delivery_used_up(d.attempts, p_max_attempts)
         ORDER BY d.next_attempt_at, d.delivery_id
         LIMIT p_limit
           FOR UPDATE OF d SKIP LOCKED
    ), claimed AS (
        UPDATE pggit.notification_deliveries d
           SET attempts = d.attempts + 1, claimed_by = session_user, claimed_worker = p_worker_id,
               claim_secret_sha256 = sha256(convert_to(due.token, 'UTF8')),
               lease_expires_at = now() + make_interval(secs => p_lease_seconds)
          FROM due
         WHERE d.delivery_id = due.id
        RETURNING d.delivery_id, d.event_id, d.endpoint, d.url, d.attempts, due.token
    )
    SELECT c.delivery_id, c.event_id, c.endpoint, c.url, e.event, e.payload, c.attempts, c.token
      FROM claimed c JOIN pggit.notification_events e ON e.event_id = c.event_id
     ORDER BY e.created_at, c.delivery_id;
END
$$;

-- Records one attempt of a claimed delivery: 'delivered'; 'failed' (retried after
-- min(p_backoff_cap, p_backoff_base * 2^(attempt-1)) seconds, half of it random, until
-- p_max_attempts are used up, then dead); 'refused' (no retry can help: the destination is not
-- allowed; dead at once). Returns delivered / retry / dead, or NULL when the claim is not the
-- caller's any more (it expired and another worker claimed the delivery again).
CREATE OR REPLACE FUNCTION pggit.record_notification_delivery(
    p_delivery_id  uuid,
    p_claim_token  text,
    p_outcome      text,
    p_error        text    DEFAULT NULL,
    p_max_attempts integer DEFAULT 10,
    p_backoff_base integer DEFAULT 30,
    p_backoff_cap  integer DEFAULT 3600
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_hash  bytea := pggit._token_hash(p_claim_token);
    v_state text;
BEGIN
    PERFORM pggit._require_enum('p_outcome', p_outcome, ARRAY['delivered', 'failed', 'refused']);
    IF p_outcome <> 'delivered' AND (p_error IS NULL OR btrim(p_error) = '') THEN
        PERFORM pggit._invalid('p_error', 'must not be empty when the attempt failed', 'what went wrong, for the operator');
    END IF;
    PERFORM pggit._require_size('p_error', octet_length(p_error), 8192, 'at most 8 KiB: the first line of the error');
    PERFORM pggit._require_count('p_max_attempts', p_max_attempts, 1, 1000, 'attempts');
    PERFORM pggit._require_count('p_backoff_base', p_backoff_base, 1, 86400, 'seconds');
    PERFORM pggit._require_count('p_backoff_cap', p_backoff_cap, greatest(p_backoff_base, 1), 604800,
        'seconds, at least p_backoff_base,');
    UPDATE pggit.notification_deliveries d
       SET delivered_at = CASE WHEN p_outcome = 'delivered' THEN now() END,
           dead_at = CASE WHEN p_outcome = 'refused'
                            OR (p_outcome = 'failed' AND pggit._delivery_used_up(d.attempts, p_max_attempts))
                          THEN now() END,
           last_error = CASE WHEN p_outcome = 'delivered' THEN d.last_error ELSE p_error END,
           next_attempt_at = CASE WHEN p_outcome = 'failed' AND NOT pggit._delivery_used_up(d.attempts, p_max_attempts)
               THEN now() + make_interval(secs => least(p_backoff_cap::float8,
                                                        p_backoff_base * power(2::float8, d.attempts - 1))
                                                  * (0.5 + random() / 2))
               ELSE d.next_attempt_at END,
           lease_expires_at = NULL,
           claim_secret_sha256 = NULL
     WHERE d.delivery_id = p_delivery_id AND d.delivered_at IS NULL AND d.dead_at IS NULL
       AND d.claim_secret_sha256 = v_hash AND d.claimed_by = session_user
    RETURNING CASE WHEN d.delivered_at IS NOT NULL THEN 'delivered' WHEN d.dead_at IS NOT NULL THEN 'dead'
                   ELSE 'retry' END
         INTO v_state;
    RETURN v_state;
END
$$;

-- What `status` and people read: one row per delivery, the destination without its path, query
-- or credentials (a webhook URL may carry a token), and its state: pending (due or waiting for
-- its next attempt), sending (claimed, lease running), delivered, dead (dead-lettered).
CREATE OR REPLACE VIEW pggit.notification_status AS
SELECT d.delivery_id,
       d.event_id,
       e.event,
       e.job_id,
       e.backup_id,
       d.endpoint,
       regexp_replace(d.url, '^([A-Za-z]+://)([^/?#]*@)?([^/?#]*).*$', '\1\3') AS destination,
       CASE WHEN d.delivered_at IS NOT NULL THEN 'delivered'
            WHEN d.dead_at IS NOT NULL THEN 'dead'
            WHEN d.lease_expires_at > now() THEN 'sending'
            ELSE 'pending'
       END AS state,
       d.attempts,
       d.next_attempt_at,
       d.last_error,
       d.claimed_worker AS worker_id,
       d.delivered_at,
       d.dead_at,
       e.created_at
  FROM pggit.notification_deliveries d
  JOIN pggit.notification_events e ON e.event_id = d.event_id;

-- Rights: the URLs (possibly secret) stay with the table owner; workers register, claim and
-- record through the functions; readers (monitoring, `status`) read the view.
REVOKE ALL ON pggit.notification_endpoints, pggit.notification_events, pggit.notification_deliveries,
              pggit.notification_status FROM PUBLIC;
GRANT SELECT ON pggit.notification_status TO pggit_backup_reader;
REVOKE ALL ON FUNCTION pggit._notification_event(text, integer, integer), pggit._webhook_owed(jsonb, text),
                       pggit._notification_payload(uuid, text, pggit.backup_jobs), pggit._backup_jobs_outbox(),
                       pggit._require_count(text, integer, integer, integer, text),
                       pggit._delivery_used_up(integer, integer),
                       pggit.register_notification_endpoints(text, jsonb),
                       pggit.claim_notification_deliveries(text, integer, integer, integer),
                       pggit.record_notification_delivery(uuid, text, text, text, integer, integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.register_notification_endpoints(text, jsonb),
                          pggit.claim_notification_deliveries(text, integer, integer, integer),
                          pggit.record_notification_delivery(uuid, text, text, text, integer, integer, integer)
    TO pggit_backup_worker;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (18, '018_outbox')
    ON CONFLICT (version) DO NOTHING;
