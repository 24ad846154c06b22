-- 023: each backup's target identity computed once and stored (issue 12, figure 6). 019's
-- backup_target_status and 022's backup_target_of computed it per backup on every read (the
-- first job of the backup's own tool, its spec's params: 015's _retention_identity), so status
-- read every backup once per watched target and the metrics snapshot paid a job lookup per
-- backup. The identity is what 015 says it is; only where it is computed changes: a row per
-- backup here, kept by a trigger on the backup's jobs (spec, tool and backup of a job are fixed
-- by 010, so only a job's insert and delete can change it), indexed by target.

CREATE TABLE IF NOT EXISTS pggit.backup_target_identity (
    backup_id uuid PRIMARY KEY REFERENCES pggit.backups ON DELETE CASCADE,
    target    jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS backup_target_identity_target ON pggit.backup_target_identity (target);

-- Recomputes one backup's row from its jobs as 015 does (so a job inserted out of created_at
-- order, or deleted, leaves the identity _retention_identity gives). Runs as the owner: the
-- table is the owner's, and a hand-made delete of a job must still keep it.
CREATE OR REPLACE FUNCTION pggit._backup_target_identity_refresh(p_backup_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_target jsonb;
BEGIN
    SELECT pggit._retention_identity(b.backup_tool, pggit._retention_params(b.backup_id, b.backup_tool))
      INTO v_target FROM pggit.backups b WHERE b.backup_id = p_backup_id;
    IF v_target IS NULL THEN
        DELETE FROM pggit.backup_target_identity i WHERE i.backup_id = p_backup_id;
    ELSE
        INSERT INTO pggit.backup_target_identity AS i (backup_id, target) VALUES (p_backup_id, v_target)
        ON CONFLICT (backup_id) DO UPDATE SET target = EXCLUDED.target WHERE i.target IS DISTINCT FROM EXCLUDED.target;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pggit._backup_jobs_identity() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.backup_id IS NOT NULL THEN
            PERFORM pggit._backup_target_identity_refresh(OLD.backup_id);
        END IF;
        RETURN OLD;
    END IF;
    IF NEW.backup_id IS NOT NULL THEN
        PERFORM pggit._backup_target_identity_refresh(NEW.backup_id);
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS backup_jobs_identity ON pggit.backup_jobs;
CREATE TRIGGER backup_jobs_identity AFTER INSERT OR DELETE ON pggit.backup_jobs
    FOR EACH ROW EXECUTE FUNCTION pggit._backup_jobs_identity();

-- the backups made before this file
INSERT INTO pggit.backup_target_identity (backup_id, target)
SELECT s.backup_id, s.target
  FROM (SELECT b.backup_id, pggit._retention_identity(b.backup_tool, pggit._retention_params(b.backup_id, b.backup_tool)) AS target
          FROM pggit.backups b) s
 WHERE s.target IS NOT NULL
ON CONFLICT (backup_id) DO NOTHING;

-- 022's view, same columns, from the stored identity.
CREATE OR REPLACE VIEW pggit.backup_target_of AS
SELECT i.backup_id, i.target
  FROM pggit.backup_target_identity i;

-- One normalised target's status (019's body), its backups found through the index.
CREATE OR REPLACE FUNCTION pggit._target_status(v_target jsonb)
RETURNS TABLE (target jsonb, backups bigint, verified_backups bigint, newest_verified_id uuid,
               newest_verified_name text, newest_verified_at timestamptz, newest_verified_seconds double precision,
               last_failure_job_id uuid, last_failure_at timestamptz, last_failure_state text, last_failure_error text,
               last_drill_backup_id uuid, last_drill_at timestamptz, last_drill_result text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    WITH mine AS (
        SELECT b.* FROM pggit.backup_target_identity i JOIN pggit.backups b ON b.backup_id = i.backup_id
         WHERE i.target = v_target
           AND NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = b.backup_id)),
    newest AS (
        SELECT m.backup_id, m.backup_name, m.completed_at FROM mine m
         WHERE m.status = 'completed' AND m.verified_at IS NOT NULL AND m.completed_at IS NOT NULL
         ORDER BY m.completed_at DESC, m.backup_id LIMIT 1),
    failure AS (
        SELECT j.job_id, coalesce(j.completed_at, j.updated_at) AS at,
               pggit.backup_job_state(j.status, j.attempts, j.max_attempts) AS state, j.last_error
          FROM pggit.backup_jobs j JOIN mine m ON m.backup_id = j.backup_id
         WHERE j.status = 'failed' AND j.tool = v_target ->> 'tool'
         ORDER BY coalesce(j.completed_at, j.updated_at) DESC, j.job_id LIMIT 1),
    drill AS (
        SELECT m.backup_id, m.restore_tested_at, m.restore_test_result FROM mine m
         WHERE m.restore_tested_at IS NOT NULL
         ORDER BY m.restore_tested_at DESC, m.backup_id LIMIT 1)
    SELECT v_target,
           (SELECT count(*) FROM mine),
           (SELECT count(*) FROM mine m WHERE m.status = 'completed' AND m.verified_at IS NOT NULL),
           n.backup_id, n.backup_name, n.completed_at,
           extract(epoch FROM now() - n.completed_at)::double precision,
           f.job_id, f.at, f.state, f.last_error,
           d.backup_id, d.restore_tested_at, d.restore_test_result
      FROM (SELECT 1) one
      LEFT JOIN newest n ON true
      LEFT JOIN failure f ON true
      LEFT JOIN drill d ON true
$$;

-- 019's signature and columns; the work is _target_status's.
CREATE OR REPLACE FUNCTION pggit.backup_target_status(p_target jsonb)
RETURNS TABLE (target jsonb, backups bigint, verified_backups bigint, newest_verified_id uuid,
               newest_verified_name text, newest_verified_at timestamptz, newest_verified_seconds double precision,
               last_failure_job_id uuid, last_failure_at timestamptz, last_failure_state text, last_failure_error text,
               last_drill_backup_id uuid, last_drill_at timestamptz, last_drill_result text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
BEGIN
    RETURN QUERY SELECT * FROM pggit._target_status(pggit._require_retention_target(p_target));
END
$$;

-- Every watched target in one call (status --check: one round trip, not one per target), in
-- the order given, each row what backup_target_status gives for it. p_targets: a JSON array of
-- targets as the config writes them; a bad one is refused naming its place (p_targets[N]).
CREATE OR REPLACE FUNCTION pggit.backup_target_statuses(p_targets jsonb)
RETURNS TABLE (target jsonb, backups bigint, verified_backups bigint, newest_verified_id uuid,
               newest_verified_name text, newest_verified_at timestamptz, newest_verified_seconds double precision,
               last_failure_job_id uuid, last_failure_at timestamptz, last_failure_state text, last_failure_error text,
               last_drill_backup_id uuid, last_drill_at timestamptz, last_drill_result text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_keys    jsonb[] := '{}';
    v_each    jsonb;
    v_place   bigint;
    v_column  text;
    v_message text;
    v_hint    text;
BEGIN
    IF p_targets IS NULL OR jsonb_typeof(p_targets) <> 'array' OR jsonb_array_length(p_targets) > 100000 THEN
        PERFORM pggit._invalid('p_targets', 'must be a JSON array of at most 100000 targets', '[{"tool": ..., ...}, ...]');
    END IF;
    FOR v_each, v_place IN SELECT t.value, t.n - 1 FROM jsonb_array_elements(p_targets) WITH ORDINALITY t(value, n) LOOP
        BEGIN
            v_keys := v_keys || pggit._require_retention_target(v_each);
        EXCEPTION WHEN invalid_parameter_value THEN
            GET STACKED DIAGNOSTICS v_column = COLUMN_NAME, v_message = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT;
            PERFORM pggit._invalid(format('p_targets[%s]%s', v_place, substr(v_column, length('p_target') + 1)),
                                   regexp_replace(v_message, '^pggit: invalid [^ ]*: ', ''), v_hint);
        END;
    END LOOP;
    RETURN QUERY SELECT s.* FROM unnest(v_keys) WITH ORDINALITY k(key, n)
                 CROSS JOIN LATERAL pggit._target_status(k.key) s ORDER BY k.n;
END
$$;

REVOKE ALL ON pggit.backup_target_identity FROM PUBLIC;
REVOKE ALL ON FUNCTION pggit._backup_target_identity_refresh(uuid), pggit._backup_jobs_identity(),
                       pggit._target_status(jsonb), pggit.backup_target_statuses(jsonb)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.backup_target_statuses(jsonb) TO pggit_backup_reader;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (23, '023_target_identity')
    ON CONFLICT (version) DO NOTHING;
