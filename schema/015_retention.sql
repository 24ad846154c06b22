-- 015: retention, evaluated in SQL so every rule can be tested on real rows. A target is what a
-- tool backs up (a pgBackRest stanza, a Barman server, a pg_dump database + schema, a
-- pg_basebackup database); its backups are kept if any rule keeps them: pinned, the newest
-- verified, keep_last / keep_days / keep_daily / keep_weekly / keep_monthly, the min_verified
-- floor, the full a kept pgBackRest incremental needs. Only completed, verified backups count
-- towards any rule; failed, cancelled and unverified ones are never counted and go after a
-- grace period. Expiry step 1 marks a backup expired (when, by which rule set, by which host)
-- in one transaction that re-checks the floor; a backup row is never deleted. Removing the data
-- (step 2) is left to a queued job per target (not in this file).

CREATE TABLE IF NOT EXISTS pggit.backup_pins (
    backup_id uuid PRIMARY KEY REFERENCES pggit.backups ON DELETE CASCADE,
    reason    text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    pinned_by text NOT NULL DEFAULT session_user,
    pinned_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pggit.backup_expirations (
    backup_id     uuid PRIMARY KEY REFERENCES pggit.backups ON DELETE CASCADE,
    target        jsonb NOT NULL,
    rule_set      jsonb NOT NULL,
    reasons       text[] NOT NULL,
    expired_by    text NOT NULL,
    expired_at    timestamptz NOT NULL DEFAULT now(),
    -- step 2: when the data was removed, or why it could not be yet
    removed_at    timestamptz,
    removal_error text
);

-- What a backup belongs to, as a retention target names it, from the parameters its job was
-- enqueued with (backup_jobs.spec, fixed by 010's triggers), never from backups.metadata: the
-- worker that finishes a backup merges its own metadata there, and must not be able to move a
-- backup of one stanza into another's count. NULL (STRICT) for a backup without such a job.
CREATE OR REPLACE FUNCTION pggit._retention_identity(p_tool text, p_params jsonb) RETURNS jsonb
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT CASE p_tool
        WHEN 'pgbackrest' THEN jsonb_build_object('tool', p_tool, 'stanza', p_params ->> 'stanza')
        WHEN 'barman' THEN jsonb_build_object('tool', p_tool, 'server', p_params ->> 'server')
        WHEN 'pg_dump' THEN jsonb_strip_nulls(jsonb_build_object('tool', p_tool,
            'database', coalesce(p_params ->> 'database', current_database()),
            'schema', p_params ->> 'schema'))
        WHEN 'pg_basebackup' THEN jsonb_build_object('tool', p_tool, 'database', current_database())
    END
$$;

-- The parameters of the job that made a backup (its first job of the backup's own tool), NULL
-- for a backup registered by hand: retention counts and expires only what this service made; a
-- DBA's backup is never verified by a job, and would otherwise go after the grace period.
CREATE OR REPLACE FUNCTION pggit._retention_params(p_backup_id uuid, p_tool text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT j.spec -> 'params' FROM pggit.backup_jobs j
     WHERE j.backup_id = p_backup_id AND j.tool = p_tool
     ORDER BY j.created_at, j.job_id LIMIT 1
$$;

-- A target as the config writes it, checked and in the form _retention_identity gives.
CREATE OR REPLACE FUNCTION pggit._require_retention_target(p_target jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_tool    text;
    v_allowed text[];
    v_key     text;
BEGIN
    IF p_target IS NULL OR jsonb_typeof(p_target) <> 'object' OR octet_length(p_target::text) > 1024 THEN
        PERFORM pggit._invalid('p_target', 'must be a small JSON object', '{"tool": ..., "stanza" | "server" | "database" | "schema": ...}');
    END IF;
    v_tool := pggit._require_enum('p_target.tool', p_target ->> 'tool', ARRAY['pgbackrest', 'barman', 'pg_dump', 'pg_basebackup']);
    v_allowed := CASE v_tool WHEN 'pgbackrest' THEN ARRAY['tool', 'stanza'] WHEN 'barman' THEN ARRAY['tool', 'server']
                             WHEN 'pg_dump' THEN ARRAY['tool', 'database', 'schema'] ELSE ARRAY['tool', 'database'] END;
    FOR v_key IN SELECT k FROM jsonb_object_keys(p_target) k LOOP
        IF v_key <> ALL (v_allowed) THEN
            PERFORM pggit._invalid('p_target.' || v_key, 'is not a key of a ' || v_tool || ' target', array_to_string(v_allowed, ', '));
        END IF;
        IF jsonb_typeof(p_target -> v_key) <> 'string' THEN
            PERFORM pggit._invalid('p_target.' || v_key, 'must be a string', array_to_string(v_allowed, ', '));
        END IF;
    END LOOP;
    IF v_tool = 'pgbackrest' THEN
        PERFORM pggit._require_name('p_target.stanza', p_target ->> 'stanza');
    ELSIF v_tool = 'barman' THEN
        PERFORM pggit._require_name('p_target.server', p_target ->> 'server');
    ELSIF coalesce(p_target ->> 'database', current_database()) <> current_database() THEN
        PERFORM pggit._invalid('p_target.database', format('%s is not this database', pggit._show(p_target ->> 'database')),
            current_database());
    END IF;
    RETURN CASE WHEN v_tool IN ('pg_dump', 'pg_basebackup')
                THEN p_target || jsonb_build_object('database', current_database()) ELSE p_target END;
END
$$;

-- The keep rules, checked, every key present (0: the rule is off).
CREATE OR REPLACE FUNCTION pggit._require_retention_rules(p_rules jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_rules jsonb;
BEGIN
    v_rules := pggit._require_options('p_rules', coalesce(p_rules, '{}'), ARRAY[
        'keep_last', 'keep_days', 'keep_daily', 'keep_weekly', 'keep_monthly', 'min_verified', 'grace_seconds']);
    RETURN jsonb_build_object(
        'keep_last',     pggit._opt_int('p_rules', v_rules, 'keep_last', 0, 100000, 0),
        'keep_days',     pggit._opt_int('p_rules', v_rules, 'keep_days', 0, 100000, 0),
        'keep_daily',    pggit._opt_int('p_rules', v_rules, 'keep_daily', 0, 100000, 0),
        'keep_weekly',   pggit._opt_int('p_rules', v_rules, 'keep_weekly', 0, 100000, 0),
        'keep_monthly',  pggit._opt_int('p_rules', v_rules, 'keep_monthly', 0, 100000, 0),
        'min_verified',  pggit._opt_int('p_rules', v_rules, 'min_verified', 1, 1000, 1),
        'grace_seconds', pggit._opt_int('p_rules', v_rules, 'grace_seconds', 0, 31536000, 86400));
END
$$;

-- Every backup of a target with what the rules say of it: keep (and why) or go. Backups already
-- expired are listed (expired = true) and count for nothing. For readers: it only reads (as the
-- owner, so the validation helpers need no grants of their own).
CREATE OR REPLACE FUNCTION pggit.retention_plan(p_target jsonb, p_rules jsonb, p_now timestamptz DEFAULT now())
RETURNS TABLE (backup_id uuid, backup_name text, status text, completed_at timestamptz, verified boolean,
               pinned boolean, expired boolean, keep boolean, reasons text[])
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
#variable_conflict use_column
DECLARE
    v_target jsonb := pggit._require_retention_target(p_target);
    v_rules  jsonb := pggit._require_retention_rules(p_rules);
    v_now    timestamptz := coalesce(p_now, now());
BEGIN
    RETURN QUERY
    WITH RECURSIVE base AS (
        SELECT b.backup_id, b.backup_name, b.status, b.completed_at, b.created_at, b.location, b.metadata,
               substring(b.location FROM '^pgbackrest://[^/]+/(.+)$') AS label,
               b.status = 'completed' AND b.verified_at IS NOT NULL AS verified,
               EXISTS (SELECT 1 FROM pggit.backup_pins p WHERE p.backup_id = b.backup_id) AS pinned,
               EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = b.backup_id) AS expired
          FROM pggit.backups b
          JOIN LATERAL (SELECT pggit._retention_params(b.backup_id, b.backup_tool) AS params) j ON true
         WHERE b.backup_tool = v_target ->> 'tool'
           AND pggit._retention_identity(b.backup_tool, j.params) = v_target),
    counted AS (  -- what the rules count: verified, completed, not expired; newest first
        SELECT c.*, row_number() OVER (ORDER BY c.completed_at DESC, c.backup_id) AS n,
               (c.completed_at AT TIME ZONE 'UTC') AS utc
          FROM base c WHERE c.verified AND NOT c.expired),
    daily AS (
        SELECT d.backup_id FROM (SELECT DISTINCT ON (date_trunc('day', c.utc)) c.backup_id, date_trunc('day', c.utc) AS p
                                   FROM counted c ORDER BY date_trunc('day', c.utc) DESC, c.n) d
         ORDER BY d.p DESC LIMIT (v_rules ->> 'keep_daily')::integer),
    weekly AS (
        SELECT d.backup_id FROM (SELECT DISTINCT ON (date_trunc('week', c.utc)) c.backup_id, date_trunc('week', c.utc) AS p
                                   FROM counted c ORDER BY date_trunc('week', c.utc) DESC, c.n) d
         ORDER BY d.p DESC LIMIT (v_rules ->> 'keep_weekly')::integer),
    monthly AS (
        SELECT d.backup_id FROM (SELECT DISTINCT ON (date_trunc('month', c.utc)) c.backup_id, date_trunc('month', c.utc) AS p
                                   FROM counted c ORDER BY date_trunc('month', c.utc) DESC, c.n) d
         ORDER BY d.p DESC LIMIT (v_rules ->> 'keep_monthly')::integer),
    ruled AS (
        SELECT c.*, array_remove(ARRAY[
                   CASE WHEN c.pinned THEN 'pinned' END,
                   CASE WHEN c.n = 1 THEN 'newest verified' END,
                   CASE WHEN c.n <= (v_rules ->> 'keep_last')::integer THEN 'keep_last' END,
                   CASE WHEN c.completed_at > v_now - make_interval(days => (v_rules ->> 'keep_days')::integer) THEN 'keep_days' END,
                   CASE WHEN c.backup_id IN (SELECT backup_id FROM daily) THEN 'keep_daily' END,
                   CASE WHEN c.backup_id IN (SELECT backup_id FROM weekly) THEN 'keep_weekly' END,
                   CASE WHEN c.backup_id IN (SELECT backup_id FROM monthly) THEN 'keep_monthly' END], NULL) AS why
          FROM counted c),
    floored AS (  -- the floor: the newest of those the rules let go, until min_verified are kept
        SELECT r.backup_id,
               CASE WHEN cardinality(r.why) = 0
                         AND (SELECT count(*) FROM ruled k WHERE cardinality(k.why) > 0)
                             + row_number() OVER (PARTITION BY cardinality(r.why) = 0 ORDER BY r.n)
                             <= (v_rules ->> 'min_verified')::integer
                    THEN ARRAY['min_verified'] ELSE r.why END AS why
          FROM ruled r),
    refs AS (  -- the labels a kept pgBackRest backup reads files of (its info's reference and
               -- prior, as its worker recorded them: a forged one only keeps more), and theirs
        SELECT r.label FROM floored k JOIN base i ON i.backup_id = k.backup_id
         CROSS JOIN LATERAL (
             SELECT x FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof(i.metadata -> 'reference') = 'array'
                                                          THEN i.metadata -> 'reference' ELSE '[]' END) x
             UNION ALL SELECT i.metadata ->> 'prior' WHERE jsonb_typeof(i.metadata -> 'prior') = 'string') r(label)
         WHERE v_target ->> 'tool' = 'pgbackrest' AND cardinality(k.why) > 0
        UNION
        SELECT r.label FROM refs JOIN base i ON i.label = refs.label
         CROSS JOIN LATERAL (
             SELECT x FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof(i.metadata -> 'reference') = 'array'
                                                          THEN i.metadata -> 'reference' ELSE '[]' END) x
             UNION ALL SELECT i.metadata ->> 'prior' WHERE jsonb_typeof(i.metadata -> 'prior') = 'string') r(label)),
    needed AS (  -- a kept pgBackRest incremental or differential needs its full (label prefix)
                 -- and every backup it references; completed, not expired, not kept otherwise
        SELECT b.backup_id FROM base b LEFT JOIN floored f ON f.backup_id = b.backup_id
         WHERE v_target ->> 'tool' = 'pgbackrest' AND b.status = 'completed' AND NOT b.expired AND NOT b.pinned
           AND coalesce(cardinality(f.why), 0) = 0
           AND (b.label IN (SELECT refs.label FROM refs)
                OR EXISTS (SELECT 1 FROM floored k JOIN base i ON i.backup_id = k.backup_id
                            WHERE cardinality(k.why) > 0
                              AND i.location LIKE b.location || '\_%' ESCAPE '\')))
    SELECT b.backup_id, b.backup_name, b.status, b.completed_at, b.verified, b.pinned, b.expired,
           CASE WHEN b.expired THEN false
                WHEN b.pinned OR b.status = 'in_progress' THEN true
                WHEN b.backup_id IN (SELECT backup_id FROM needed) THEN true
                WHEN b.verified THEN cardinality(f.why) > 0 OR b.backup_id IN (SELECT backup_id FROM needed)
                ELSE b.created_at > v_now - make_interval(secs => (v_rules ->> 'grace_seconds')::integer) END,
           CASE WHEN b.expired THEN ARRAY['expired']
                WHEN b.backup_id IN (SELECT backup_id FROM needed) THEN ARRAY['base of a kept incremental']
                WHEN b.verified THEN coalesce(f.why, ARRAY[]::text[])
                WHEN b.status = 'in_progress' THEN ARRAY['in progress']
                WHEN b.pinned THEN ARRAY['pinned']
                WHEN b.created_at > v_now - make_interval(secs => (v_rules ->> 'grace_seconds')::integer)
                    THEN ARRAY['grace period (' || CASE WHEN b.status = 'completed' THEN 'unverified' ELSE b.status END || ', not counted)']
                ELSE ARRAY[CASE WHEN b.status = 'completed' THEN 'unverified' ELSE b.status END || ', never counted'] END
      FROM base b LEFT JOIN floored f ON f.backup_id = b.backup_id
     ORDER BY b.completed_at DESC NULLS FIRST, b.created_at DESC;
END
$$;

-- The advisory lock that serialises expiry and pinning of one target.
CREATE OR REPLACE FUNCTION pggit._retention_lock(p_target jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT pg_advisory_xact_lock(hashtextextended('pggit-retention:' || p_target::text, 0))
$$;

CREATE OR REPLACE FUNCTION pggit.pin_backup(p_backup_id uuid, p_reason text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_backup pggit.backups;
BEGIN
    PERFORM pggit._require_text('p_reason', p_reason, '^[^[:cntrl:]]+$', 500, 'why it must be kept, 1-500 characters');
    SELECT * INTO v_backup FROM pggit.backups b WHERE b.backup_id = p_backup_id;
    IF NOT FOUND THEN
        PERFORM pggit._invalid('p_backup_id', format('no backup %s', coalesce(p_backup_id::text, 'NULL')), 'a pggit.backups.backup_id');
    END IF;
    IF v_backup.backup_tool IN ('pgbackrest', 'barman', 'pg_dump', 'pg_basebackup') THEN
        PERFORM pggit._retention_lock(pggit._retention_identity(v_backup.backup_tool,
                                          pggit._retention_params(v_backup.backup_id, v_backup.backup_tool)));
    END IF;
    IF EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = p_backup_id) THEN
        RAISE EXCEPTION 'backup %: already expired, so it cannot be pinned', p_backup_id USING ERRCODE = '55000';
    END IF;
    INSERT INTO pggit.backup_pins (backup_id, reason) VALUES (p_backup_id, p_reason)
    ON CONFLICT (backup_id) DO UPDATE SET reason = EXCLUDED.reason, pinned_by = session_user, pinned_at = now();
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION pggit.unpin_backup(p_backup_id uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
BEGIN
    DELETE FROM pggit.backup_pins p WHERE p.backup_id = p_backup_id;
    RETURN FOUND;
END
$$;

-- Expiry step 1 for one target: every backup the plan lets go is marked expired, with the rule
-- set, the host and the time, in one transaction under the target's lock; the floor is checked
-- again on what remains, and the whole step is refused if it would not hold.
CREATE OR REPLACE FUNCTION pggit.expire_backups(p_worker_id text, p_target jsonb, p_rules jsonb)
RETURNS TABLE (backup_id uuid, backup_name text, reasons text[])
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
#variable_conflict use_column
DECLARE
    v_host   text := split_part(pggit._require_worker_id(p_worker_id), '/', 1);
    v_target jsonb := pggit._require_retention_target(p_target);
    v_rules  jsonb := pggit._require_retention_rules(p_rules);
    v_left   bigint;
    v_total  bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        -- a snapshot taken before the lock was granted would not see the expiries of the call it
        -- waited for: two rule sets could each keep the floor and together go below it
        RAISE EXCEPTION 'pggit: expire_backups runs in READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = '25000', HINT = 'call it outside an explicit REPEATABLE READ or SERIALIZABLE transaction';
    END IF;
    PERFORM pggit._retention_lock(v_target);
    RETURN QUERY
    WITH plan AS (SELECT * FROM pggit.retention_plan(v_target, v_rules)),
    marked AS (
        INSERT INTO pggit.backup_expirations AS e (backup_id, target, rule_set, reasons, expired_by)
        SELECT p.backup_id, v_target, v_rules, p.reasons, v_host FROM plan p
         WHERE NOT p.keep AND NOT p.expired AND p.status <> 'in_progress'
        ON CONFLICT ON CONSTRAINT backup_expirations_pkey DO NOTHING
        RETURNING e.backup_id, e.reasons)
    SELECT m.backup_id, b.backup_name, m.reasons FROM marked m JOIN pggit.backups b ON b.backup_id = m.backup_id;

    SELECT count(*) FILTER (WHERE NOT p.expired), count(*) INTO v_left, v_total
      FROM pggit.retention_plan(v_target, v_rules) p WHERE p.verified;
    IF v_left < least(v_total, (v_rules ->> 'min_verified')::integer) OR (v_total > 0 AND v_left = 0) THEN
        RAISE EXCEPTION 'retention of %: would leave % verified backups of %, below min_verified %', v_target, v_left,
            v_total, v_rules ->> 'min_verified' USING ERRCODE = '55000';
    END IF;
END
$$;

-- An expired backup's data is about to be removed (step 2): its job does not go back in play
-- (the operator's reset of a failed or cancelled job would complete a backup marked expired,
-- counted for nothing and then removed), and no new job (a restore drill) reads it.
CREATE OR REPLACE FUNCTION pggit._backup_jobs_refuse_expired() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_expired pggit.backup_expirations;
BEGIN
    IF TG_OP = 'UPDATE' AND NOT (NEW.status IN ('queued', 'running') AND OLD.status IN ('failed', 'cancelled')) THEN
        RETURN NEW;
    END IF;
    SELECT * INTO v_expired FROM pggit.backup_expirations e WHERE e.backup_id = NEW.backup_id;
    IF FOUND THEN
        RAISE EXCEPTION 'backup %: expired by retention at % (host %), so its jobs do not run again', NEW.backup_id,
                v_expired.expired_at, v_expired.expired_by
            USING ERRCODE = '55000',
                  HINT = 'schedule a new backup (pggit.backup_pg_dump / backup_pgbackrest / ...); pggit.backup_expirations says why it went';
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS backup_jobs_refuse_expired ON pggit.backup_jobs;
CREATE TRIGGER backup_jobs_refuse_expired BEFORE INSERT OR UPDATE OF status ON pggit.backup_jobs
    FOR EACH ROW EXECUTE FUNCTION pggit._backup_jobs_refuse_expired();

-- Who sees and does what: readers see pins and expirations and may plan; operators pin; the
-- workers expire (their retention step), admins all of it.
REVOKE ALL ON pggit.backup_pins, pggit.backup_expirations FROM PUBLIC;
GRANT SELECT ON pggit.backup_pins, pggit.backup_expirations TO pggit_backup_reader;
REVOKE ALL ON FUNCTION pggit._retention_identity(text, jsonb), pggit._retention_params(uuid, text),
                       pggit._backup_jobs_refuse_expired(), pggit._require_retention_target(jsonb),
                       pggit._require_retention_rules(jsonb), pggit.retention_plan(jsonb, jsonb, timestamptz),
                       pggit._retention_lock(jsonb), pggit.pin_backup(uuid, text), pggit.unpin_backup(uuid),
                       pggit.expire_backups(text, jsonb, jsonb)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.retention_plan(jsonb, jsonb, timestamptz) TO pggit_backup_reader;
GRANT EXECUTE ON FUNCTION pggit.pin_backup(uuid, text), pggit.unpin_backup(uuid) TO pggit_backup_operator;
GRANT EXECUTE ON FUNCTION pggit.expire_backups(text, jsonb, jsonb) TO pggit_backup_worker;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (15, '015_retention')
    ON CONFLICT (version) DO NOTHING;
