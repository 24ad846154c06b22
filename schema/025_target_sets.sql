-- 025: the targets' status and summary computed set-based (issue 12, figure 6). With 10k
-- targets and 1M backups, 023's backup_target_statuses ran _target_status once per target
-- (about 1 ms each: 10 s for status --check), and 022's backup_target_summary sorted every backup
-- by its jsonb target on disk for its ordered array_aggs (4-5 s, 0.9 s of it JIT compilation).
-- Here each reads the targets' backups once (one hash join and one hash aggregate), then finds
-- the newest row of each group among the rows at the group's maximum only. Same columns and the
-- same answers as before (tests/sql/test_target_sets.py compares them on a mixed population); JIT
-- is off (it cost more than it saved on every plan here) and work_mem is raised for the call only,
-- so the hash tables stay in memory.

-- Failed jobs are few among finished ones: found through this index, not a scan of every job.
CREATE INDEX IF NOT EXISTS backup_jobs_failed ON pggit.backup_jobs (backup_id) WHERE status = 'failed';

-- What _target_status (023) gives for each of p_keys (normalised targets), all at once: one row
-- per key with its place n (1-based), in any order. The targets' backups are read once (hash
-- joins: the planner cannot know how many keys an array holds and would look each backup up by
-- its id, 3 s at 1M); each distinct target is named by its first place, an integer, so the
-- newest-row sorts compare integers, not jsonb (3.4 s of sorting at 1M).
CREATE OR REPLACE FUNCTION pggit._target_statuses(p_keys jsonb[])
RETURNS TABLE (n bigint, target jsonb, backups bigint, verified_backups bigint, newest_verified_id uuid,
               newest_verified_name text, newest_verified_at timestamptz, newest_verified_seconds double precision,
               last_failure_job_id uuid, last_failure_at timestamptz, last_failure_state text, last_failure_error text,
               last_drill_backup_id uuid, last_drill_at timestamptz, last_drill_result text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pggit, pg_temp SET jit = off SET work_mem = '256MB' SET enable_nestloop = off AS $$
    WITH given AS (
        SELECT k.key, k.n FROM unnest(p_keys) WITH ORDINALITY k(key, n)),
    wanted AS (
        SELECT g.key, min(g.n) AS w FROM given g GROUP BY g.key),
    mine AS MATERIALIZED (
        SELECT w.w, b.backup_id, b.backup_name, b.status, b.verified_at, b.completed_at,
               b.restore_tested_at, b.restore_test_result
          FROM wanted w
          JOIN pggit.backup_target_identity i ON i.target = w.key
          JOIN pggit.backups b ON b.backup_id = i.backup_id
         WHERE NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = b.backup_id)),
    counts AS (
        SELECT m.w, count(*) AS backups,
               count(*) FILTER (WHERE m.status = 'completed' AND m.verified_at IS NOT NULL) AS verified
          FROM mine m GROUP BY m.w),
    newest AS (
        SELECT DISTINCT ON (m.w) m.w, m.backup_id, m.backup_name, m.completed_at
          FROM mine m
         WHERE m.status = 'completed' AND m.verified_at IS NOT NULL AND m.completed_at IS NOT NULL
         ORDER BY m.w, m.completed_at DESC, m.backup_id),
    drill AS (
        SELECT DISTINCT ON (m.w) m.w, m.backup_id, m.restore_tested_at, m.restore_test_result
          FROM mine m WHERE m.restore_tested_at IS NOT NULL
         ORDER BY m.w, m.restore_tested_at DESC, m.backup_id),
    -- failed jobs are few (backup_jobs_failed); updated_at is NOT NULL, so the coalesce never is
    failure AS (
        SELECT DISTINCT ON (m.w) m.w, j.job_id, coalesce(j.completed_at, j.updated_at) AS at,
               pggit.backup_job_state(j.status, j.attempts, j.max_attempts) AS state, j.last_error
          FROM pggit.backup_jobs j
          JOIN mine m ON m.backup_id = j.backup_id
          JOIN wanted w ON w.w = m.w
         WHERE j.status = 'failed' AND j.tool = w.key ->> 'tool'
         ORDER BY m.w, coalesce(j.completed_at, j.updated_at) DESC, j.job_id)
    SELECT g.n, g.key,
           coalesce(c.backups, 0), coalesce(c.verified, 0),
           nw.backup_id, nw.backup_name, nw.completed_at,
           extract(epoch FROM now() - nw.completed_at)::double precision,
           f.job_id, f.at, f.state, f.last_error,
           d.backup_id, d.restore_tested_at, d.restore_test_result
      FROM given g
      JOIN wanted w ON w.key = g.key
      LEFT JOIN counts c ON c.w = w.w
      LEFT JOIN newest nw ON nw.w = w.w
      LEFT JOIN failure f ON f.w = w.w
      LEFT JOIN drill d ON d.w = w.w
$$;

-- A list of targets, each checked as _require_retention_target checks one, the error naming its
-- place (p_targets[N]), at most p_limit of them; their normalised forms, in order. One loop for
-- 017's worker targets (at most 1000, as text keys) and the statuses below (at most 100000):
-- 017's and 023's copies of it are redefined on top of this one.
CREATE OR REPLACE FUNCTION pggit._require_retention_targets(p_targets jsonb, p_limit integer) RETURNS jsonb[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_keys    jsonb[] := '{}';
    v_each    jsonb;
    v_place   bigint;
    v_column  text;
    v_message text;
    v_hint    text;
BEGIN
    IF p_targets IS NULL OR jsonb_typeof(p_targets) <> 'array' OR jsonb_array_length(p_targets) > p_limit THEN
        PERFORM pggit._invalid('p_targets', format('must be a JSON array of at most %s targets', p_limit),
                               '[{"tool": ..., ...}, ...]');
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
    RETURN v_keys;
END
$$;

-- 017's signature and answers (the keys as text), from the loop above.
CREATE OR REPLACE FUNCTION pggit._require_retention_targets(p_targets jsonb) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT coalesce(array_agg(k.key::text ORDER BY k.n), '{}')
      FROM unnest(pggit._require_retention_targets(p_targets, 1000)) WITH ORDINALITY k(key, n)
$$;

REVOKE ALL ON FUNCTION pggit._require_retention_targets(jsonb, integer), pggit._require_retention_targets(jsonb)
    FROM PUBLIC;

-- 023's signature, checks and errors; for many targets the work is _target_statuses's (one pass,
-- not one per target).
CREATE OR REPLACE FUNCTION pggit.backup_target_statuses(p_targets jsonb)
RETURNS TABLE (target jsonb, backups bigint, verified_backups bigint, newest_verified_id uuid,
               newest_verified_name text, newest_verified_at timestamptz, newest_verified_seconds double precision,
               last_failure_job_id uuid, last_failure_at timestamptz, last_failure_state text, last_failure_error text,
               last_drill_backup_id uuid, last_drill_at timestamptz, last_drill_result text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_keys jsonb[] := pggit._require_retention_targets(p_targets, 100000);
BEGIN
    -- a few targets: each through its index (about 1 ms with 100 backups); many: one pass over
    -- the backups (its hash joins read every backup: about 1 s at 1M, whatever the number)
    IF cardinality(v_keys) <= 100 THEN
        RETURN QUERY SELECT s.* FROM unnest(v_keys) WITH ORDINALITY k(key, n)
                     CROSS JOIN LATERAL pggit._target_status(k.key) s ORDER BY k.n;
        RETURN;
    END IF;
    RETURN QUERY SELECT s.target, s.backups, s.verified_backups, s.newest_verified_id, s.newest_verified_name,
                        s.newest_verified_at, s.newest_verified_seconds, s.last_failure_job_id, s.last_failure_at,
                        s.last_failure_state, s.last_failure_error, s.last_drill_backup_id, s.last_drill_at,
                        s.last_drill_result
                   FROM pggit._target_statuses(v_keys) s ORDER BY s.n;
END
$$;

-- 022's summary rows: counts and latest times in one hash aggregate (022's ordered array_aggs
-- sorted every backup by its jsonb target, on disk), then the newest completed backup of each
-- group among the rows at the group's latest completed_at only: the least id of a tie (022 took
-- any one). A completed backup always has completed_at (010/012 set it), so 022's DESC (NULLS
-- FIRST) order has no NULL to put first.
CREATE OR REPLACE FUNCTION pggit._target_summary()
RETURNS TABLE (target jsonb, tool text, backup_type text, last_success_at timestamptz, last_failure_at timestamptz,
               newest_verified_at timestamptz, verified_available bigint, completed bigint, failed bigint,
               cancelled bigint, last_duration_seconds numeric, last_size_bytes bigint, repo_key text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' SET jit = off SET work_mem = '256MB' SET enable_mergejoin = off AS $$
    WITH placed AS MATERIALIZED (
        SELECT t.target, b.backup_id, b.backup_type, b.status, b.completed_at, b.started_at,
               b.status = 'completed' AND b.verified_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = b.backup_id) AS available
          FROM pggit.backup_target_identity t JOIN pggit.backups b ON b.backup_id = t.backup_id),
    groups AS (
        SELECT p.target, p.backup_type,
               max(p.completed_at) FILTER (WHERE p.status = 'completed') AS last_success_at,
               max(p.completed_at) FILTER (WHERE p.status = 'failed') AS last_failure_at,
               max(p.completed_at) FILTER (WHERE p.available) AS newest_verified_at,
               count(*) FILTER (WHERE p.available) AS verified_available,
               count(*) FILTER (WHERE p.status = 'completed') AS completed,
               count(*) FILTER (WHERE p.status = 'failed') AS failed,
               count(*) FILTER (WHERE p.status = 'cancelled') AS cancelled,
               max(p.completed_at) FILTER (WHERE p.status = 'completed' AND p.started_at IS NOT NULL) AS last_timed_at
          FROM placed p GROUP BY p.target, p.backup_type),
    -- the rows at a group's latest completed_at (with or without started_at): normally one each
    latest AS (
        SELECT p.target, p.backup_type, p.backup_id, p.started_at, p.completed_at,
               p.completed_at = g.last_success_at AS newest, p.completed_at = g.last_timed_at AS timed
          FROM placed p JOIN groups g ON g.target = p.target AND g.backup_type = p.backup_type
         WHERE p.status = 'completed' AND p.completed_at IN (g.last_success_at, g.last_timed_at)),
    newest AS (
        SELECT DISTINCT ON (l.target, l.backup_type) l.target, l.backup_type, l.backup_id
          FROM latest l WHERE l.newest ORDER BY l.target, l.backup_type, l.backup_id),
    timed AS (
        SELECT DISTINCT ON (l.target, l.backup_type) l.target, l.backup_type,
               extract(epoch FROM l.completed_at - l.started_at) AS seconds
          FROM latest l WHERE l.timed AND l.started_at IS NOT NULL ORDER BY l.target, l.backup_type, l.backup_id)
    SELECT g.target, g.target ->> 'tool', g.backup_type, g.last_success_at, g.last_failure_at, g.newest_verified_at,
           g.verified_available, g.completed, g.failed, g.cancelled, t.seconds, b.backup_size, b.metadata ->> 'repo'
      FROM groups g
      LEFT JOIN newest n ON n.target = g.target AND n.backup_type = g.backup_type
      LEFT JOIN pggit.backups b ON b.backup_id = n.backup_id
      LEFT JOIN timed t ON t.target = g.target AND t.backup_type = g.backup_type
$$;

-- 022's view, same columns, from the function (a view cannot carry jit or work_mem itself)
CREATE OR REPLACE VIEW pggit.backup_target_summary AS
SELECT s.target, s.tool, s.backup_type, s.last_success_at, s.last_failure_at, s.newest_verified_at,
       s.verified_available, s.completed, s.failed, s.cancelled, s.last_duration_seconds, s.last_size_bytes,
       s.repo_key
  FROM pggit._target_summary() s;

REVOKE ALL ON FUNCTION pggit._target_statuses(jsonb[]), pggit._target_summary() FROM PUBLIC;
-- a view runs its functions with its reader's rights: the summary's readers may call it
GRANT EXECUTE ON FUNCTION pggit._target_summary() TO pggit_backup_reader;

-- ---------------------------------------------------------------------------------------------
-- The queue-wide reads of status --check and the metrics file, which read every job (1M: 0.5 s
-- for backup_queue_statistics, 0.2-0.35 s each for the running jobs and the permanent failures,
-- 0.6 s twice for the metrics' job counts). A job's state and when it ended, indexed: the few
-- ready, running, retrying and permanently failed jobs and the last day's finished ones are
-- found through it. It carries the state's columns and the job times, so counting every job's
-- state reads the index only.
CREATE INDEX IF NOT EXISTS backup_jobs_state
    ON pggit.backup_jobs (pggit.backup_job_state(status, attempts, max_attempts), (coalesce(completed_at, updated_at)))
    INCLUDE (status, attempts, max_attempts, created_at, started_at, completed_at, updated_at);

-- Drilled backups are few: restore_drill_status finds them through this.
CREATE INDEX IF NOT EXISTS backups_restore_tested ON pggit.backups (restore_tested_at) WHERE restore_tested_at IS NOT NULL;

-- 019's columns and answers; each figure a lookup in backup_jobs_state (019 computed every job's
-- state, whatever it was, for a day's counts).
CREATE OR REPLACE VIEW pggit.backup_queue_statistics AS
SELECT (SELECT count(*) FROM pggit.backup_jobs j
         WHERE pggit.backup_job_state(j.status, j.attempts, j.max_attempts) = 'ready') AS ready,
       (SELECT count(*) FROM pggit.backup_jobs j
         WHERE pggit.backup_job_state(j.status, j.attempts, j.max_attempts) = 'in_progress') AS in_progress,
       (SELECT count(*) FROM pggit.backup_jobs j
         WHERE pggit.backup_job_state(j.status, j.attempts, j.max_attempts) = 'will_retry') AS will_retry,
       (SELECT count(*) FROM pggit.backup_jobs j
         WHERE pggit.backup_job_state(j.status, j.attempts, j.max_attempts) = 'completed'
           AND coalesce(j.completed_at, j.updated_at) > now() - interval '24 hours') AS completed_24h,
       (SELECT count(*) FROM pggit.backup_jobs j
         WHERE pggit.backup_job_state(j.status, j.attempts, j.max_attempts) = 'permanently_failed'
           AND coalesce(j.completed_at, j.updated_at) > now() - interval '24 hours') AS permanently_failed_24h,
       (SELECT count(*) FROM pggit.backup_jobs j
         WHERE pggit.backup_job_state(j.status, j.attempts, j.max_attempts) = 'cancelled'
           AND coalesce(j.completed_at, j.updated_at) > now() - interval '24 hours') AS cancelled_24h,
       (SELECT extract(epoch FROM now() - min(j.created_at))::double precision FROM pggit.backup_jobs j
         WHERE pggit.backup_job_state(j.status, j.attempts, j.max_attempts) = 'ready') AS oldest_ready_seconds;

-- Per job state: how many jobs, the oldest one's creation and start (the metrics file's job
-- figures; 022's snapshot read them from backup_job_queue, which joins every job to its backup:
-- 0.6 s twice at 1M). Every job has a backup (backup_id NOT NULL, a foreign key), so the counts
-- are backup_job_queue's.
CREATE OR REPLACE VIEW pggit.backup_job_state_counts AS
SELECT pggit.backup_job_state(j.status, j.attempts, j.max_attempts) AS job_state, count(*) AS n,
       min(j.created_at) AS oldest_created_at, min(j.started_at) AS oldest_started_at
  FROM pggit.backup_jobs j
 GROUP BY 1;

REVOKE ALL ON pggit.backup_job_state_counts FROM PUBLIC;
GRANT SELECT ON pggit.backup_job_state_counts TO pggit_backup_reader;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (25, '025_target_sets')
    ON CONFLICT (version) DO NOTHING;
