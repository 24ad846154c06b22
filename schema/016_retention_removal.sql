-- 016: expiry step 2 and the pruning of finished jobs. 015 marks a backup expired; here the
-- removal of its data is recorded on that mark (removed, or failed with the error and how many
-- times it was tried, so a failed removal is retried and visible), one host at a time per
-- target (a session lock the remover holds while it marks and removes), and finished jobs older
-- than an age are deleted (their backups' rows stay). A backup row is never deleted.

ALTER TABLE pggit.backup_expirations
    ADD COLUMN IF NOT EXISTS removed_by       text,
    ADD COLUMN IF NOT EXISTS removal_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS removal_tried_at timestamptz;

-- One remover per target: a session-level advisory lock (released when the remover ends its
-- session, or dies), taken on the target as _require_retention_target normalises it, so two
-- hosts spelling one target differently still meet. The key is not 015's transaction lock
-- (expire_backups takes that one inside, while this one is held).
CREATE OR REPLACE FUNCTION pggit.lock_retention_target(p_target jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
    SELECT pg_try_advisory_lock(hashtextextended('pggit-retention-run:' || pggit._require_retention_target(p_target)::text, 0))
$$;

CREATE OR REPLACE FUNCTION pggit.unlock_retention_target(p_target jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
    SELECT pg_advisory_unlock(hashtextextended('pggit-retention-run:' || pggit._require_retention_target(p_target)::text, 0))
$$;

-- The expired backups of a target whose data is still there (never removed, or the removal
-- failed), oldest first, with what their tool's removal needs. Only a completed backup's
-- location names what it wrote (a job that never finished has its output directory there).
-- `held` says why one must not be removed now (NULL: remove it); the remover records it as the
-- attempt's error, so it stays pending and visible. The location is what a worker recorded: a
-- completed backup whose location is also that of a backup not expired (or, for files, a
-- directory holding it or a path inside it) would remove that backup's data, whatever target
-- or database it belongs to; and `pgbackrest expire --set` of a full or differential takes
-- every set that depends on it (label prefix, or its info's reference/prior), so it waits
-- while such a set is not expired (pinned, unverified, or kept for any other reason).
-- p_rules (the remover's own rule set for the target, as retention_plan takes it): any worker
-- may call expire_backups with rules of its choosing, so a backup expired under rules that keep
-- less than the remover's (any keep_*, min_verified or grace_seconds lower) is held, not removed
-- on a hostile or misconfigured host's word. NULL: no such check (listing only).
DROP FUNCTION IF EXISTS pggit.pending_backup_removals(jsonb);
DROP FUNCTION IF EXISTS pggit.pending_backup_removals(jsonb, jsonb);
CREATE FUNCTION pggit.pending_backup_removals(p_target jsonb, p_rules jsonb DEFAULT NULL)
RETURNS TABLE (backup_id uuid, backup_name text, backup_tool text, status text, location text, metadata jsonb,
               removal_attempts integer, removal_error text, held text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
    WITH mine AS (SELECT CASE WHEN p_rules IS NOT NULL THEN pggit._require_retention_rules(p_rules) END AS rules)
    SELECT b.backup_id, b.backup_name, b.backup_tool, b.status, coalesce(b.location, ''), b.metadata,
           e.removal_attempts, e.removal_error,
           coalesce((SELECT format('held: %s %s backup %s (%s), which is not expired, so removing %s would remove its data',
                          CASE WHEN o.location = b.location THEN 'it records the location of'
                               WHEN b.location LIKE 'pgbackrest://%' THEN 'pgBackRest would expire with it the dependent'
                               ELSE 'its path overlaps that of' END,
                          o.backup_tool, o.backup_id, left(o.backup_name, 100), left(b.location, 300))
              FROM pggit.backups o
             WHERE b.status = 'completed' AND b.location IS NOT NULL AND o.location IS NOT NULL
               AND o.backup_id <> b.backup_id
               AND NOT EXISTS (SELECT 1 FROM pggit.backup_expirations x WHERE x.backup_id = o.backup_id)
               AND (o.location = b.location
                    OR (b.location LIKE 'file://%' AND o.location LIKE 'file://%'
                        AND (left(o.location, length(b.location) + 1) = b.location || '/'
                             OR left(b.location, length(o.location) + 1) = o.location || '/'))
                    OR (b.location LIKE 'pgbackrest://%'
                        AND (left(o.location, length(b.location) + 1) = b.location || '_'
                             OR (substring(o.location FROM '^pgbackrest://[^/]+/') = substring(b.location FROM '^pgbackrest://[^/]+/')
                                 AND (o.metadata ->> 'prior' = substring(b.location FROM '^pgbackrest://[^/]+/(.+)$')
                                      OR (jsonb_typeof(o.metadata -> 'reference') = 'array'
                                          AND o.metadata -> 'reference' ? substring(b.location FROM '^pgbackrest://[^/]+/(.+)$')))))))
             ORDER BY o.created_at, o.backup_id LIMIT 1),
           (SELECT format('held: expired by %s under rules that keep less than this host''s (%s): '
                          'not removed; expire it under rules at least as strict as %s',
                          e.expired_by, string_agg(format('%s %s < %s', k, e.rule_set ->> k, m.rules ->> k), ', ' ORDER BY k),
                          m.rules::text)
              FROM unnest(ARRAY['keep_last', 'keep_days', 'keep_daily', 'keep_weekly', 'keep_monthly',
                                'min_verified', 'grace_seconds']) k
             WHERE m.rules IS NOT NULL
               AND coalesce((e.rule_set ->> k)::bigint, 0) < (m.rules ->> k)::bigint
            HAVING count(*) > 0))
      FROM pggit.backup_expirations e JOIN pggit.backups b ON b.backup_id = e.backup_id CROSS JOIN mine m
     WHERE e.removed_at IS NULL AND e.target = pggit._require_retention_target(p_target)
     ORDER BY b.completed_at NULLS FIRST, b.created_at, b.backup_id
$$;

-- The removal's outcome, on the expiration mark: p_error NULL says removed (by this host, now);
-- otherwise the error is kept and the attempt counted, and the next retention run tries again.
-- Returns 'removed' / 'failed', or NULL for a backup that is not expired or already removed.
CREATE OR REPLACE FUNCTION pggit.record_backup_removal(p_worker_id text, p_backup_id uuid, p_error text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_host  text := split_part(pggit._require_worker_id(p_worker_id), '/', 1);
    v_found uuid;
BEGIN
    PERFORM pggit._require_output_size('p_error', p_error);
    IF p_error IS NOT NULL AND btrim(p_error) = '' THEN
        PERFORM pggit._invalid('p_error', 'must not be empty', 'NULL when removed, else what went wrong');
    END IF;
    UPDATE pggit.backup_expirations e
       SET removed_at = CASE WHEN p_error IS NULL THEN now() END,
           removed_by = CASE WHEN p_error IS NULL THEN v_host END,
           removal_error = p_error,
           removal_attempts = e.removal_attempts + 1,
           removal_tried_at = now()
     WHERE e.backup_id = p_backup_id AND e.removed_at IS NULL
    RETURNING e.backup_id INTO v_found;
    RETURN CASE WHEN v_found IS NULL THEN NULL WHEN p_error IS NULL THEN 'removed' ELSE 'failed' END;
END
$$;

-- What every expiration came to, for readers: pending (marked, data still there), removed, or
-- failed (with the error and the attempts so far).
CREATE OR REPLACE VIEW pggit.backup_expiration_status AS
SELECT e.backup_id, b.backup_name, b.backup_tool, e.target, e.reasons, e.expired_by, e.expired_at,
       CASE WHEN e.removed_at IS NOT NULL THEN 'removed'
            WHEN e.removal_error IS NOT NULL THEN 'failed'
            ELSE 'pending' END AS removal,
       e.removed_at, e.removed_by, e.removal_attempts, e.removal_tried_at, e.removal_error
  FROM pggit.backup_expirations e JOIN pggit.backups b ON b.backup_id = e.backup_id;

-- Pruning: jobs that ended for good (completed, cancelled, failed with no attempt left) and
-- ended more than p_older_than_seconds ago are deleted; their backups' rows stay. A job that
-- may still run, or still holds its target, is never one of them (the DELETE guard of 011
-- would refuse it anyway); neither is the job of a backup that is still in progress, which the
-- guide's views (backup_job_queue) and the after-delete trigger read, nor the job that places a
-- backup in its retention target while its data is not removed. Returns how many went.
CREATE OR REPLACE FUNCTION pggit.prune_backup_jobs(p_older_than_seconds integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_count bigint;
BEGIN
    IF p_older_than_seconds IS NULL OR p_older_than_seconds < 3600 OR p_older_than_seconds > 315360000 THEN
        PERFORM pggit._invalid('p_older_than_seconds', format('%s is out of range', coalesce(p_older_than_seconds::text, 'NULL')),
            'seconds from 3600 (an hour) to 315360000 (ten years)');
    END IF;
    WITH gone AS (
        DELETE FROM pggit.backup_jobs j
         WHERE pggit.backup_job_state(j.status, j.attempts, j.max_attempts) IN ('completed', 'cancelled', 'permanently_failed')
           AND j.lease_expires_at IS NULL
           AND coalesce(j.completed_at, j.updated_at) < now() - make_interval(secs => p_older_than_seconds)
           AND NOT EXISTS (SELECT 1 FROM pggit.backups b WHERE b.backup_id = j.backup_id AND b.status = 'in_progress')
           -- the first job of the backup's own tool is what places it in its target (015's
           -- _retention_params): without it the backup would never be counted nor expired, and
           -- its data never removed; it stays until that data is (its expiration says removed)
           AND NOT EXISTS (SELECT 1 FROM pggit.backups b
                            WHERE b.backup_id = j.backup_id AND b.backup_tool = j.tool
                              AND NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e
                                               WHERE e.backup_id = b.backup_id AND e.removed_at IS NOT NULL)
                              AND j.job_id = (SELECT f.job_id FROM pggit.backup_jobs f
                                               WHERE f.backup_id = b.backup_id AND f.tool = b.backup_tool
                                               ORDER BY f.created_at, f.job_id LIMIT 1))
        RETURNING 1)
    SELECT count(*) INTO v_count FROM gone;
    RETURN v_count;
END
$$;

REVOKE ALL ON FUNCTION pggit.lock_retention_target(jsonb), pggit.unlock_retention_target(jsonb),
                       pggit.pending_backup_removals(jsonb, jsonb), pggit.record_backup_removal(text, uuid, text),
                       pggit.prune_backup_jobs(integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.lock_retention_target(jsonb), pggit.unlock_retention_target(jsonb),
                          pggit.pending_backup_removals(jsonb, jsonb), pggit.record_backup_removal(text, uuid, text),
                          pggit.prune_backup_jobs(integer)
    TO pggit_backup_worker;
REVOKE ALL ON pggit.backup_expiration_status FROM PUBLIC;
GRANT SELECT ON pggit.backup_expiration_status TO pggit_backup_reader;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (16, '016_retention_removal')
    ON CONFLICT (version) DO NOTHING;
