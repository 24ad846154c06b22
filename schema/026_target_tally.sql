-- 026: each target's figures kept up to date as backups change (issue 12, figure 6). 025 computed
-- the statuses (status --check) and the summary (the metrics file) from every backup on each read:
-- about 1 s at 1M backups whatever the plan, so status took 5.4 s and the metrics file 2.9 s with
-- 10k targets. Here a row per target and backup type (a group) holds its counts and, for each
-- kind of "newest" the readers show, which backup (or failed job) that is; the readers join those
-- few rows to the backups and jobs they name. Same columns and answers as 025.
--
-- How the rows stay right:
-- - Counts change by the difference each change of a backup makes (never recounted), so a
--   statement changing many backups, a trigger seeing rows the statement has not reached yet, or
--   two sessions changing one group are all exact: each difference is applied once, under the
--   group's row lock (ON CONFLICT DO UPDATE / FOR UPDATE wait for it).
-- - A newest is replaced when a backup arrives that is newer (idempotent: applying it twice, or
--   after a recomputation that already saw it, changes nothing). When the backup a newest names
--   leaves that kind (expired, deleted, moved to another group, a retry puts a failed backup back
--   in progress), the group's newests are found again from its rows, with its row locked: every
--   write that could change them waits for that lock, and in READ COMMITTED each statement sees
--   what those writers committed. Only that rare case reads a group's backups.
-- - Members join and leave with their identity (023's table, kept from their jobs); a deleted
--   backup leaves in a BEFORE DELETE trigger, while its identity and expiry can still be read.
-- - pggit._tally_rebuild() recomputes every row (this file's fill; a repair after a bulk load
--   with the triggers off, as bench/growth.py does).
-- Limits, by design: one statement that changes a backup and its expiry together (a writable
-- CTE, which only the owner can write) counts it from the state after both; ties on a time are
-- broken by the least id where 022's summary took any row; a group's newest deleted one by one
-- in a statement deleting many is found again for each (each reads the group).

-- A newest: its time in its kind (at), which backup or, for a failure, which job it is (id), and
-- the backup it belongs to (itself, or the failed job's). `recency` ('epoch' - at: the later, the
-- smaller) comes first, then id: the least of two is the newer, the lesser id among a tie (019's
-- ORDER BY at DESC, id), so LEAST() picks a newest (and passes over NULLs) in one expression
-- node: these run on every finished job, where a comparison written as a function (its CASE
-- inlined) cost about 10 us each, prepared again in every transaction.
DO $$
BEGIN
    IF to_regtype('pggit.backup_tally_newest') IS NULL THEN
        CREATE TYPE pggit.backup_tally_newest AS (recency interval, id uuid, at timestamptz, backup_id uuid);
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS pggit.backup_target_tally (
    target           jsonb  NOT NULL,
    backup_type      text   NOT NULL,
    members          bigint NOT NULL DEFAULT 0,  -- backups of the group, expired or not
    live             bigint NOT NULL DEFAULT 0,  -- not expired
    available        bigint NOT NULL DEFAULT 0,  -- completed, verified, not expired
    completed        bigint NOT NULL DEFAULT 0,  -- these three expired or not
    failed           bigint NOT NULL DEFAULT 0,
    cancelled        bigint NOT NULL DEFAULT 0,
    newest_available pggit.backup_tally_newest,  -- the kinds of _tally_at
    newest_completed pggit.backup_tally_newest,
    newest_timed     pggit.backup_tally_newest,
    last_failed      pggit.backup_tally_newest,
    drill            pggit.backup_tally_newest,
    failure          pggit.backup_tally_newest,  -- a failed job of the group's tool on a backup not expired
    PRIMARY KEY (target, backup_type)
);

-- Where a backup stands in each kind of newest: its time, or NULL when it is not of that kind
-- (an absent backup, b NULL, is of none). The one definition of the kinds, for the changes below
-- and the recomputation (_tally_group). Newest completed, timed and failed count expired backups
-- too (the summary's last success, duration, size and last failure); the others do not.
CREATE OR REPLACE FUNCTION pggit._tally_at(b pggit.backups, p_live boolean, p_kind text) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_kind
        WHEN 'available' THEN CASE WHEN p_live AND b.status = 'completed' AND b.verified_at IS NOT NULL THEN b.completed_at END
        WHEN 'completed' THEN CASE WHEN b.status = 'completed' THEN b.completed_at END
        WHEN 'timed'     THEN CASE WHEN b.status = 'completed' AND b.started_at IS NOT NULL THEN b.completed_at END
        WHEN 'failed'    THEN CASE WHEN b.status = 'failed' THEN b.completed_at END
        WHEN 'drill'     THEN CASE WHEN p_live THEN b.restore_tested_at END
    END
$$;

-- A backup as a newest of a kind, NULL when it is not of that kind.
CREATE OR REPLACE FUNCTION pggit._tally_of(b pggit.backups, p_live boolean, p_kind text) RETURNS pggit.backup_tally_newest
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN pggit._tally_at(b, p_live, p_kind) IS NOT NULL
                THEN ROW(timestamptz 'epoch' - pggit._tally_at(b, p_live, p_kind), b.backup_id,
                         pggit._tally_at(b, p_live, p_kind), b.backup_id)::pggit.backup_tally_newest END
$$;

-- Whether a backup, as o, was of a kind where, as n, it no longer is (gone from it, or moved in it).
CREATE OR REPLACE FUNCTION pggit._tally_left(o pggit.backups, o_live boolean, n pggit.backups, n_live boolean,
                                             p_kind text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT pggit._tally_at(o, o_live, p_kind) IS NOT NULL
           AND pggit._tally_at(o, o_live, p_kind) IS DISTINCT FROM pggit._tally_at(n, n_live, p_kind)
$$;

-- How much a backup adds to each count: 1 or 0 (an absent backup adds nothing).
CREATE OR REPLACE FUNCTION pggit._tally_counts(b pggit.backups, p_live boolean, p_count text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN b.backup_id IS NULL THEN 0 ELSE (CASE p_count
        WHEN 'members'   THEN true
        WHEN 'live'      THEN p_live
        WHEN 'available' THEN p_live AND b.status = 'completed' AND b.verified_at IS NOT NULL
        WHEN 'completed' THEN b.status = 'completed'
        WHEN 'failed'    THEN b.status = 'failed'
        WHEN 'cancelled' THEN b.status = 'cancelled'
    END)::integer END
$$;

-- A failed job of the group's tool as a newest failure (019: the latest of completed_at, or
-- updated_at; the least job id among a tie), NULL for any other job.
CREATE OR REPLACE FUNCTION pggit._tally_failure(j pggit.backup_jobs, p_tool text) RETURNS pggit.backup_tally_newest
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN j.status = 'failed' AND j.tool = p_tool
                THEN ROW(timestamptz 'epoch' - coalesce(j.completed_at, j.updated_at), j.job_id,
                         coalesce(j.completed_at, j.updated_at), j.backup_id)::pggit.backup_tally_newest END
$$;

-- The least of many newests is min(ARRAY[newest])[1]: arrays have a min (array_smaller, in C)
-- where rows have none, and an absent newest (a NULL element) sorts after every other.

-- One group's row computed from its backups and their jobs, p_without left out (a backup being
-- deleted, still visible to its BEFORE DELETE trigger). Reads every backup of the group: only for
-- a lost newest and for rebuilds.
CREATE OR REPLACE FUNCTION pggit._tally_group(p_target jsonb, p_type text, p_without uuid)
RETURNS SETOF pggit.backup_target_tally
LANGUAGE sql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    WITH m AS MATERIALIZED (
        SELECT b, NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = b.backup_id) AS live
          FROM pggit.backup_target_identity i JOIN pggit.backups b ON b.backup_id = i.backup_id
         WHERE i.target = p_target AND b.backup_type = p_type AND b.backup_id IS DISTINCT FROM p_without),
    failures AS (
        SELECT pggit._tally_failure(j, p_target ->> 'tool') AS f
          FROM m JOIN pggit.backup_jobs j ON j.backup_id = (m.b).backup_id
         WHERE m.live AND j.status = 'failed')
    SELECT p_target, p_type,
           count(*), coalesce(sum(pggit._tally_counts(m.b, m.live, 'live')), 0)::bigint,
           coalesce(sum(pggit._tally_counts(m.b, m.live, 'available')), 0)::bigint,
           coalesce(sum(pggit._tally_counts(m.b, m.live, 'completed')), 0)::bigint,
           coalesce(sum(pggit._tally_counts(m.b, m.live, 'failed')), 0)::bigint,
           coalesce(sum(pggit._tally_counts(m.b, m.live, 'cancelled')), 0)::bigint,
           (min(ARRAY[pggit._tally_of(m.b, m.live, 'available')]))[1],
           (min(ARRAY[pggit._tally_of(m.b, m.live, 'completed')]))[1],
           (min(ARRAY[pggit._tally_of(m.b, m.live, 'timed')]))[1],
           (min(ARRAY[pggit._tally_of(m.b, m.live, 'failed')]))[1],
           (min(ARRAY[pggit._tally_of(m.b, m.live, 'drill')]))[1],
           (SELECT x.f FROM failures x ORDER BY x.f LIMIT 1)
      FROM m
$$;

-- A group's newests found again from its rows, its row locked. Its counts are never recounted
-- here: a statement changing several backups of the group runs this trigger for the first of
-- them when all are already changed, and their differences still follow; a newest taken twice
-- is the same newest, a count taken twice is wrong.
CREATE OR REPLACE FUNCTION pggit._tally_refresh(p_target jsonb, p_type text, p_without uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    INSERT INTO pggit.backup_target_tally (target, backup_type) VALUES (p_target, p_type) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM pggit.backup_target_tally t WHERE t.target = p_target AND t.backup_type = p_type FOR UPDATE;
    -- a statement of its own after the lock: it sees what each writer that held it committed
    UPDATE pggit.backup_target_tally t
       SET newest_available = c.newest_available, newest_completed = c.newest_completed,
           newest_timed = c.newest_timed, last_failed = c.last_failed, drill = c.drill, failure = c.failure
      FROM pggit._tally_group(p_target, p_type, p_without) c
     WHERE t.target = p_target AND t.backup_type = p_type;
END
$$;

-- One backup's change within one group: o as it was (NULL: it was not a member), n as it is
-- (NULL: it is no longer one), each with whether it was or is not expired (live). p_gained: the
-- caller knows n only gained facts over o (see _backups_tally), so o left no kind it was of.
CREATE OR REPLACE FUNCTION pggit._tally_apply(p_target jsonb, p_type text, o pggit.backups, o_live boolean,
                                              n pggit.backups, n_live boolean, p_gained boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_row     pggit.backup_target_tally;
    v_failure pggit.backup_tally_newest;
    v_was     boolean := o.backup_id IS NOT NULL AND o_live;  -- its failed jobs were counted
    v_is      boolean := n.backup_id IS NOT NULL AND n_live;  -- they are
BEGIN
    -- o may have been the newest of a kind it no longer is in the same place (or held the
    -- group's newest failure, and its jobs no longer count): if the group's row names it, the
    -- newests are found again. (Nested: plpgsql prepares an expression in each transaction it
    -- first runs in, and these are not prepared for the changes of every finished job.)
    IF o.backup_id IS NOT NULL AND NOT p_gained THEN
        IF pggit._tally_left(o, o_live, n, n_live, 'available') OR pggit._tally_left(o, o_live, n, n_live, 'completed')
           OR pggit._tally_left(o, o_live, n, n_live, 'timed') OR pggit._tally_left(o, o_live, n, n_live, 'failed')
           OR pggit._tally_left(o, o_live, n, n_live, 'drill') OR v_was AND NOT v_is THEN
            SELECT * INTO v_row FROM pggit.backup_target_tally t
             WHERE t.target = p_target AND t.backup_type = p_type FOR UPDATE;
            IF NOT FOUND OR o.backup_id IN ((v_row.newest_available).backup_id, (v_row.newest_completed).backup_id,
                                            (v_row.newest_timed).backup_id, (v_row.last_failed).backup_id,
                                            (v_row.drill).backup_id, (v_row.failure).backup_id) THEN
                PERFORM pggit._tally_refresh(p_target, p_type, CASE WHEN n.backup_id IS NULL THEN o.backup_id END);
            END IF;
        END IF;
    END IF;
    IF v_is AND NOT v_was THEN
        SELECT (f).* INTO v_failure
          FROM pggit.backup_jobs j CROSS JOIN LATERAL pggit._tally_failure(j, p_target ->> 'tool') f
         WHERE j.backup_id = n.backup_id AND j.status = 'failed' AND f IS NOT NULL ORDER BY f LIMIT 1;
    END IF;
    INSERT INTO pggit.backup_target_tally AS t (target, backup_type, members, live, available, completed, failed, cancelled,
                                               newest_available, newest_completed, newest_timed, last_failed, drill, failure)
    VALUES (p_target, p_type,
            pggit._tally_counts(n, n_live, 'members') - pggit._tally_counts(o, o_live, 'members'),
            pggit._tally_counts(n, n_live, 'live') - pggit._tally_counts(o, o_live, 'live'),
            pggit._tally_counts(n, n_live, 'available') - pggit._tally_counts(o, o_live, 'available'),
            pggit._tally_counts(n, n_live, 'completed') - pggit._tally_counts(o, o_live, 'completed'),
            pggit._tally_counts(n, n_live, 'failed') - pggit._tally_counts(o, o_live, 'failed'),
            pggit._tally_counts(n, n_live, 'cancelled') - pggit._tally_counts(o, o_live, 'cancelled'),
            pggit._tally_of(n, n_live, 'available'), pggit._tally_of(n, n_live, 'completed'),
            pggit._tally_of(n, n_live, 'timed'), pggit._tally_of(n, n_live, 'failed'),
            pggit._tally_of(n, n_live, 'drill'), CASE WHEN v_failure.id IS NOT NULL THEN v_failure END)
    ON CONFLICT (target, backup_type) DO UPDATE
       SET members = t.members + EXCLUDED.members, live = t.live + EXCLUDED.live,
           available = t.available + EXCLUDED.available, completed = t.completed + EXCLUDED.completed,
           failed = t.failed + EXCLUDED.failed, cancelled = t.cancelled + EXCLUDED.cancelled,
           newest_available = LEAST(EXCLUDED.newest_available, t.newest_available),
           newest_completed = LEAST(EXCLUDED.newest_completed, t.newest_completed),
           newest_timed = LEAST(EXCLUDED.newest_timed, t.newest_timed),
           last_failed = LEAST(EXCLUDED.last_failed, t.last_failed),
           drill = LEAST(EXCLUDED.drill, t.drill),
           failure = LEAST(EXCLUDED.failure, t.failure);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The triggers: every change that moves a backup within, into or out of a group.
-- ---------------------------------------------------------------------------------------------

-- Every change of what a backup adds to its group holds the backup's row lock: its own UPDATE
-- and DELETE do; a change of its identity, expiry or failed jobs takes it here, before it reads
-- the backup with the others. So two such changes of one backup (an expiry while its drill ends)
-- follow each other, and the second reads what the first committed: read without the lock, the
-- drill's trigger counted a backup being expired as not expired.
CREATE OR REPLACE FUNCTION pggit._tally_backup(p_backup_id uuid) RETURNS pggit.backups
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_backup pggit.backups;
BEGIN
    SELECT b.* INTO v_backup FROM pggit.backups b WHERE b.backup_id = p_backup_id FOR NO KEY UPDATE;
    RETURN v_backup;  -- its fields NULL: no such backup (deleted)
END
$$;

-- A backup's facts changed (only the columns the kinds and counts read: the claim's started_at
-- of a backup in progress, sizes, names and metadata do not fire it).
CREATE OR REPLACE FUNCTION pggit._backups_tally() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_target jsonb;
    v_live   boolean;
BEGIN
    SELECT i.target, NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = i.backup_id)
      INTO v_target, v_live
      FROM pggit.backup_target_identity i WHERE i.backup_id = NEW.backup_id;
    IF NOT FOUND THEN
        RETURN NULL;  -- no target: not this service's backup, or not yet
    END IF;
    IF NEW.backup_type = OLD.backup_type THEN
        -- Each kind (_tally_at) is a status and a time that is set. A backup that only gained
        -- facts (out of in_progress, or its status kept; a time set where there was none, the
        -- kinds' times unchanged otherwise) left none of the kinds it was of: how a job's backup
        -- ends and is verified, the changes of every finished job.
        PERFORM pggit._tally_apply(v_target, NEW.backup_type, OLD, v_live, NEW, v_live,
            OLD.status IN ('in_progress', NEW.status)
            AND (OLD.completed_at IS NULL OR OLD.completed_at IS NOT DISTINCT FROM NEW.completed_at)
            AND (OLD.restore_tested_at IS NULL OR OLD.restore_tested_at IS NOT DISTINCT FROM NEW.restore_tested_at)
            AND (OLD.verified_at IS NULL OR NEW.verified_at IS NOT NULL)
            AND (OLD.started_at IS NULL OR NEW.started_at IS NOT NULL));
    ELSE
        PERFORM pggit._tally_apply(v_target, OLD.backup_type, OLD, v_live, NULL, NULL, false);
        PERFORM pggit._tally_apply(v_target, NEW.backup_type, NULL, NULL, NEW, v_live, false);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS backups_tally ON pggit.backups;
CREATE TRIGGER backups_tally AFTER UPDATE ON pggit.backups FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.backup_type IS DISTINCT FROM NEW.backup_type
          OR OLD.completed_at IS DISTINCT FROM NEW.completed_at
          OR OLD.restore_tested_at IS DISTINCT FROM NEW.restore_tested_at
          OR (OLD.verified_at IS NULL) <> (NEW.verified_at IS NULL)
          OR (OLD.started_at IS NULL) <> (NEW.started_at IS NULL) AND 'completed' IN (OLD.status, NEW.status))
    EXECUTE FUNCTION pggit._backups_tally();

-- A deleted backup leaves its group before it goes (its identity and expiry are still there to
-- read; after the delete, the cascade has removed them). Its jobs and identity, deleted by the
-- cascade afterwards, then find no backup and change nothing.
CREATE OR REPLACE FUNCTION pggit._backups_tally_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_target jsonb;
    v_live   boolean;
BEGIN
    SELECT i.target, NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = i.backup_id)
      INTO v_target, v_live
      FROM pggit.backup_target_identity i WHERE i.backup_id = OLD.backup_id;
    IF FOUND THEN
        PERFORM pggit._tally_apply(v_target, OLD.backup_type, OLD, v_live, NULL, NULL, false);
    END IF;
    RETURN OLD;
END
$$;

DROP TRIGGER IF EXISTS backups_tally_delete ON pggit.backups;
CREATE TRIGGER backups_tally_delete BEFORE DELETE ON pggit.backups FOR EACH ROW
    EXECUTE FUNCTION pggit._backups_tally_delete();

-- A backup's identity was stored, changed or removed (023: from its jobs): it joins or leaves a
-- group, as it stands.
CREATE OR REPLACE FUNCTION pggit._backup_target_identity_tally() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_backup pggit.backups;
    v_live   boolean;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        v_backup := pggit._tally_backup(OLD.backup_id);
        IF v_backup.backup_id IS NOT NULL THEN  -- else deleted: it has left already
            v_live := NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = OLD.backup_id);
            PERFORM pggit._tally_apply(OLD.target, v_backup.backup_type, v_backup, v_live, NULL, NULL, false);
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        v_backup := pggit._tally_backup(NEW.backup_id);
        IF v_backup.backup_id IS NOT NULL THEN
            v_live := NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = NEW.backup_id);
            PERFORM pggit._tally_apply(NEW.target, v_backup.backup_type, NULL, NULL, v_backup, v_live, false);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS backup_target_identity_tally ON pggit.backup_target_identity;
CREATE TRIGGER backup_target_identity_tally AFTER INSERT OR DELETE OR UPDATE ON pggit.backup_target_identity
    FOR EACH ROW EXECUTE FUNCTION pggit._backup_target_identity_tally();

-- A backup expired (or its expiry was removed): it leaves (or rejoins) the counts of backups not
-- expired, and its failed jobs with it.
CREATE OR REPLACE FUNCTION pggit._backup_expirations_tally() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_backup pggit.backups;
    v_target jsonb;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        v_backup := pggit._tally_backup(OLD.backup_id);
        SELECT i.target INTO v_target FROM pggit.backup_target_identity i WHERE i.backup_id = OLD.backup_id;
        IF v_target IS NOT NULL AND v_backup.backup_id IS NOT NULL THEN
            PERFORM pggit._tally_apply(v_target, v_backup.backup_type, v_backup, false, v_backup, true, false);
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        v_backup := pggit._tally_backup(NEW.backup_id);
        SELECT i.target INTO v_target FROM pggit.backup_target_identity i WHERE i.backup_id = NEW.backup_id;
        IF v_target IS NOT NULL AND v_backup.backup_id IS NOT NULL THEN
            PERFORM pggit._tally_apply(v_target, v_backup.backup_type, v_backup, true, v_backup, false, false);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS backup_expirations_tally ON pggit.backup_expirations;
CREATE TRIGGER backup_expirations_tally AFTER INSERT OR DELETE OR UPDATE OF backup_id ON pggit.backup_expirations
    FOR EACH ROW EXECUTE FUNCTION pggit._backup_expirations_tally();

-- A job failed, or a failed job changed (a retry claimed it, it was requeued, cancelled or
-- deleted): its group's newest failure. Only jobs that are or were failed fire it (the WHEN
-- clauses: heartbeats and claims of fresh jobs do not).
CREATE OR REPLACE FUNCTION pggit._backup_jobs_tally() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_backup_id uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.backup_id ELSE NEW.backup_id END;
    v_target    jsonb;
    v_type      text;
    v_was       pggit.backup_tally_newest;
    v_is        pggit.backup_tally_newest;
BEGIN
    v_type := (pggit._tally_backup(v_backup_id)).backup_type;
    SELECT i.target INTO v_target
      FROM pggit.backup_target_identity i
     WHERE i.backup_id = v_backup_id AND v_type IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = i.backup_id);
    IF NOT FOUND THEN
        RETURN NULL;  -- no group, or expired (its jobs are not counted), or being deleted
    END IF;
    IF TG_OP <> 'INSERT' THEN
        v_was := pggit._tally_failure(OLD, v_target ->> 'tool');
    END IF;
    IF TG_OP <> 'DELETE' THEN
        v_is := pggit._tally_failure(NEW, v_target ->> 'tool');
    END IF;
    IF v_was.id IS NOT NULL AND v_was IS DISTINCT FROM v_is
       AND (SELECT (t.failure).id FROM pggit.backup_target_tally t
             WHERE t.target = v_target AND t.backup_type = v_type FOR UPDATE) IS NOT DISTINCT FROM v_was.id THEN
        PERFORM pggit._tally_refresh(v_target, v_type, NULL);  -- sees this job as it is now
    ELSIF v_is.id IS NOT NULL THEN
        UPDATE pggit.backup_target_tally t SET failure = LEAST(v_is, t.failure)
         WHERE t.target = v_target AND t.backup_type = v_type;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS backup_jobs_tally_insert ON pggit.backup_jobs;
DROP TRIGGER IF EXISTS backup_jobs_tally_update ON pggit.backup_jobs;
DROP TRIGGER IF EXISTS backup_jobs_tally_delete ON pggit.backup_jobs;
CREATE TRIGGER backup_jobs_tally_insert AFTER INSERT ON pggit.backup_jobs FOR EACH ROW
    WHEN (NEW.status = 'failed') EXECUTE FUNCTION pggit._backup_jobs_tally();
CREATE TRIGGER backup_jobs_tally_update AFTER UPDATE ON pggit.backup_jobs FOR EACH ROW
    WHEN (OLD.status = 'failed' OR NEW.status = 'failed') EXECUTE FUNCTION pggit._backup_jobs_tally();
CREATE TRIGGER backup_jobs_tally_delete AFTER DELETE ON pggit.backup_jobs FOR EACH ROW
    WHEN (OLD.status = 'failed') EXECUTE FUNCTION pggit._backup_jobs_tally();

-- Every row recomputed, writers held off meanwhile (a writer that changed a backup and waits
-- for the table then adds its difference to what this counted without it).
CREATE OR REPLACE FUNCTION pggit._tally_rebuild() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_rows bigint;
BEGIN
    LOCK TABLE pggit.backup_target_tally IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM pggit.backup_target_tally;
    INSERT INTO pggit.backup_target_tally
    SELECT c.*
      FROM (SELECT DISTINCT i.target, b.backup_type
              FROM pggit.backup_target_identity i JOIN pggit.backups b ON b.backup_id = i.backup_id) g
     CROSS JOIN LATERAL pggit._tally_group(g.target, g.backup_type, NULL) c;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

-- A TRUNCATE fires no row trigger: the rows are recomputed.
CREATE OR REPLACE FUNCTION pggit._tally_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
BEGIN
    PERFORM pggit._tally_rebuild();
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS backups_tally_truncate ON pggit.backups;
DROP TRIGGER IF EXISTS backup_jobs_tally_truncate ON pggit.backup_jobs;
DROP TRIGGER IF EXISTS backup_target_identity_tally_truncate ON pggit.backup_target_identity;
DROP TRIGGER IF EXISTS backup_expirations_tally_truncate ON pggit.backup_expirations;
CREATE TRIGGER backups_tally_truncate AFTER TRUNCATE ON pggit.backups
    FOR EACH STATEMENT EXECUTE FUNCTION pggit._tally_truncated();
CREATE TRIGGER backup_jobs_tally_truncate AFTER TRUNCATE ON pggit.backup_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pggit._tally_truncated();
CREATE TRIGGER backup_target_identity_tally_truncate AFTER TRUNCATE ON pggit.backup_target_identity
    FOR EACH STATEMENT EXECUTE FUNCTION pggit._tally_truncated();
CREATE TRIGGER backup_expirations_tally_truncate AFTER TRUNCATE ON pggit.backup_expirations
    FOR EACH STATEMENT EXECUTE FUNCTION pggit._tally_truncated();

-- the backups made before this file
SELECT pggit._tally_rebuild();

-- ---------------------------------------------------------------------------------------------
-- The readers, from the rows: 025's columns and answers.
-- ---------------------------------------------------------------------------------------------

-- What 023's _target_status gives for each of p_keys (normalised targets): one row per key with
-- its place n (1-based). A target's figures are its groups' (one per backup type): counts added,
-- the newest of their newests; the names, states and results read from the rows they name.
CREATE OR REPLACE FUNCTION pggit._target_statuses(p_keys jsonb[])
RETURNS TABLE (n bigint, target jsonb, backups bigint, verified_backups bigint, newest_verified_id uuid,
               newest_verified_name text, newest_verified_at timestamptz, newest_verified_seconds double precision,
               last_failure_job_id uuid, last_failure_at timestamptz, last_failure_state text, last_failure_error text,
               last_drill_backup_id uuid, last_drill_at timestamptz, last_drill_result text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pggit, pg_temp SET jit = off AS $$
    WITH given AS (
        SELECT k.key, k.n FROM unnest(p_keys) WITH ORDINALITY k(key, n)),
    wanted AS (
        SELECT g.key, min(g.n) AS w FROM given g GROUP BY g.key),
    figures AS (
        SELECT w.w, sum(t.live)::bigint AS backups, sum(t.available)::bigint AS verified,
               (min(ARRAY[t.newest_available]))[1] AS newest, (min(ARRAY[t.failure]))[1] AS failure,
               (min(ARRAY[t.drill]))[1] AS drill
          FROM wanted w JOIN pggit.backup_target_tally t ON t.target = w.key
         GROUP BY w.w)
    SELECT g.n, g.key, coalesce(f.backups, 0), coalesce(f.verified, 0),
           nb.backup_id, nb.backup_name, nb.completed_at,
           extract(epoch FROM now() - nb.completed_at)::double precision,
           j.job_id, coalesce(j.completed_at, j.updated_at),
           pggit.backup_job_state(j.status, j.attempts, j.max_attempts), j.last_error,
           db.backup_id, db.restore_tested_at, db.restore_test_result
      FROM given g
      JOIN wanted w ON w.key = g.key
      LEFT JOIN figures f ON f.w = w.w
      LEFT JOIN pggit.backups nb ON nb.backup_id = (f.newest).id
      LEFT JOIN pggit.backup_jobs j ON j.job_id = (f.failure).id
      LEFT JOIN pggit.backups db ON db.backup_id = (f.drill).id
$$;

-- 023's one target, now one of the many above.
CREATE OR REPLACE FUNCTION pggit._target_status(v_target jsonb)
RETURNS TABLE (target jsonb, backups bigint, verified_backups bigint, newest_verified_id uuid,
               newest_verified_name text, newest_verified_at timestamptz, newest_verified_seconds double precision,
               last_failure_job_id uuid, last_failure_at timestamptz, last_failure_state text, last_failure_error text,
               last_drill_backup_id uuid, last_drill_at timestamptz, last_drill_result text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT s.target, s.backups, s.verified_backups, s.newest_verified_id, s.newest_verified_name, s.newest_verified_at,
           s.newest_verified_seconds, s.last_failure_job_id, s.last_failure_at, s.last_failure_state,
           s.last_failure_error, s.last_drill_backup_id, s.last_drill_at, s.last_drill_result
      FROM pggit._target_statuses(ARRAY[v_target]) s
$$;

-- 023's signature, checks and errors; one read of the rows whatever the number of targets.
CREATE OR REPLACE FUNCTION pggit.backup_target_statuses(p_targets jsonb)
RETURNS TABLE (target jsonb, backups bigint, verified_backups bigint, newest_verified_id uuid,
               newest_verified_name text, newest_verified_at timestamptz, newest_verified_seconds double precision,
               last_failure_job_id uuid, last_failure_at timestamptz, last_failure_state text, last_failure_error text,
               last_drill_backup_id uuid, last_drill_at timestamptz, last_drill_result text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
BEGIN
    RETURN QUERY SELECT s.target, s.backups, s.verified_backups, s.newest_verified_id, s.newest_verified_name,
                        s.newest_verified_at, s.newest_verified_seconds, s.last_failure_job_id, s.last_failure_at,
                        s.last_failure_state, s.last_failure_error, s.last_drill_backup_id, s.last_drill_at,
                        s.last_drill_result
                   FROM pggit._target_statuses(pggit._require_retention_targets(p_targets, 100000)) s ORDER BY s.n;
END
$$;

-- 022's summary rows, one per group with a backup; the newest completed and timed backups read
-- for their size, repository and duration.
CREATE OR REPLACE FUNCTION pggit._target_summary()
RETURNS TABLE (target jsonb, tool text, backup_type text, last_success_at timestamptz, last_failure_at timestamptz,
               newest_verified_at timestamptz, verified_available bigint, completed bigint, failed bigint,
               cancelled bigint, last_duration_seconds numeric, last_size_bytes bigint, repo_key text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' SET jit = off AS $$
    SELECT t.target, t.target ->> 'tool', t.backup_type, (t.newest_completed).at, (t.last_failed).at,
           (t.newest_available).at, t.available, t.completed, t.failed, t.cancelled,
           extract(epoch FROM tb.completed_at - tb.started_at), nb.backup_size, nb.metadata ->> 'repo'
      FROM pggit.backup_target_tally t
      LEFT JOIN pggit.backups nb ON nb.backup_id = (t.newest_completed).id
      LEFT JOIN pggit.backups tb ON tb.backup_id = (t.newest_timed).id
     WHERE t.members > 0
$$;

REVOKE ALL ON pggit.backup_target_tally FROM PUBLIC;
REVOKE ALL ON FUNCTION pggit._tally_backup(uuid), pggit._tally_at(pggit.backups, boolean, text), pggit._tally_of(pggit.backups, boolean, text),
                       pggit._tally_left(pggit.backups, boolean, pggit.backups, boolean, text),
                       pggit._tally_counts(pggit.backups, boolean, text), pggit._tally_failure(pggit.backup_jobs, text),
                       pggit._tally_group(jsonb, text, uuid), pggit._tally_refresh(jsonb, text, uuid),
                       pggit._tally_apply(jsonb, text, pggit.backups, boolean, pggit.backups, boolean, boolean),
                       pggit._backups_tally(), pggit._backups_tally_delete(), pggit._backup_target_identity_tally(),
                       pggit._backup_expirations_tally(), pggit._backup_jobs_tally(), pggit._tally_rebuild(),
                       pggit._tally_truncated(), pggit._target_statuses(jsonb[]), pggit._target_status(jsonb)
    FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- status --check's own checks of 10k targets, cheaper (same answers and errors)
-- ---------------------------------------------------------------------------------------------

-- 003's name check as plpgsql (see below, the finished job's SQL functions): each call of the
-- SQL one parsed and planned its body again, 25 us for each target checked.
CREATE OR REPLACE FUNCTION pggit._require_name(p_param text, p_value text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    RETURN pggit._require_text(p_param, p_value, '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$', 63,
        'a name of 1-63 characters: letters, digits, _ . - (starting with a letter or digit)');
END
$$;

-- 015's target check; the keys and their types checked at once, the loop (a query of its own,
-- 5 us of each target's 14) run only to name the first key that is wrong, as before.
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
    IF p_target - v_allowed <> '{}' OR jsonb_path_exists(p_target, '$.* ? (@.type() != "string")') THEN
        FOR v_key IN SELECT k FROM jsonb_object_keys(p_target) k LOOP
            IF v_key <> ALL (v_allowed) THEN
                PERFORM pggit._invalid('p_target.' || v_key, 'is not a key of a ' || v_tool || ' target', array_to_string(v_allowed, ', '));
            END IF;
            IF jsonb_typeof(p_target -> v_key) <> 'string' THEN
                PERFORM pggit._invalid('p_target.' || v_key, 'must be a string', array_to_string(v_allowed, ', '));
            END IF;
        END LOOP;
    END IF;
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

-- 025's list of targets checked, at once: a block of its own (a subtransaction) for each of 10k
-- targets cost 0.2 s of status --check. Only when one is refused are they checked one by one
-- again, with 025's loop, to name the first refused place as before.
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
    BEGIN
        SELECT coalesce(array_agg(pggit._require_retention_target(t.value) ORDER BY t.n), '{}') INTO v_keys
          FROM jsonb_array_elements(p_targets) WITH ORDINALITY t(value, n);
        RETURN v_keys;
    EXCEPTION WHEN invalid_parameter_value THEN
        v_keys := '{}';
    END;
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

-- Permanently failed jobs not acknowledged, counted (status --check and the metrics file, each
-- run): 019's view joins each to its backup and reads each job row, 0.2 s with 50k of them. Here
-- from an index holding what the count reads; the same number (every job has a backup).
CREATE INDEX IF NOT EXISTS backup_jobs_failed_for_good ON pggit.backup_jobs (job_id) INCLUDE (completed_at, updated_at)
    WHERE pggit.backup_job_state(status, attempts, max_attempts) = 'permanently_failed';

CREATE OR REPLACE VIEW pggit.backup_unacknowledged_failure_count AS
SELECT count(*) AS n
  FROM pggit.backup_jobs j
 WHERE pggit.backup_job_state(j.status, j.attempts, j.max_attempts) = 'permanently_failed'  -- the index's words
   AND NOT EXISTS (SELECT 1 FROM pggit.backup_failure_acknowledgements a
                    WHERE a.job_id = j.job_id AND a.failed_at = coalesce(j.completed_at, j.updated_at));

REVOKE ALL ON pggit.backup_unacknowledged_failure_count FROM PUBLIC;
GRANT SELECT ON pggit.backup_unacknowledged_failure_count TO pggit_backup_reader;

-- ---------------------------------------------------------------------------------------------
-- A finished job, cheaper: what the tally adds to each job (about 0.1 ms of trigger work per
-- change of a backup) is paid for here. Same signatures, checks, errors (in 011's order) and
-- answers.
-- ---------------------------------------------------------------------------------------------

-- 011's finish_backup_job; the backup's end and its facts are one write (they were two: the
-- job's trigger ended it, then its facts were written).
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
    -- every check has passed: the claim, this login's and still running, locked to the end
    SELECT j.backup_id, j.tool INTO v_backup_id, v_tool
      FROM pggit.backup_jobs j
     WHERE j.job_id = p_job_id AND j.status = 'running'
       AND j.claim_secret_sha256 = v_hash AND j.claimed_by = session_user
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_tool <> 'restore_test' THEN
        -- the backup ends with its facts in one write, before its job: the job's trigger (012)
        -- then finds it ended (what it would have written, written), and the backup's own
        -- triggers (026's tally) see one change, not two, on every finished job. A backup
        -- already completed keeps its end and gets the facts, as in 011.
        UPDATE pggit.backups b
           SET status           = 'completed',
               error_message    = CASE WHEN b.status = 'in_progress' THEN NULL ELSE b.error_message END,
               completed_at     = CASE WHEN b.status = 'in_progress' THEN now() ELSE b.completed_at END,
               backup_size      = coalesce(v_size, b.backup_size),
               compressed_size  = coalesce(v_compressed, b.compressed_size),
               compression_type = coalesce(v_backup ->> 'compression_type', b.compression_type),
               checksum         = coalesce(v_backup ->> 'checksum', b.checksum),
               location         = coalesce(v_location, b.location),
               backup_type      = coalesce(v_type, b.backup_type),
               verified_at      = CASE WHEN v_verified THEN now() ELSE b.verified_at END,
               metadata         = b.metadata || coalesce(v_backup -> 'metadata', '{}')
         WHERE b.backup_id = v_backup_id AND b.status IN ('in_progress', 'completed');
    END IF;
    UPDATE pggit.backup_jobs j
       SET status = 'completed', completed_at = now(), lease_expires_at = NULL, last_error = NULL,
           output = p_output, result = coalesce(p_result, '{}')
     WHERE j.job_id = p_job_id AND j.status = 'running'
       AND j.claim_secret_sha256 = v_hash AND j.claimed_by = session_user;
    IF v_tool = 'restore_test' THEN
        UPDATE pggit.backups b
           SET restore_tested_at = now(), restore_test_result = 'passed',
               metadata = b.metadata || jsonb_build_object('restore_test',
                   coalesce(v_backup -> 'metadata', '{}') || jsonb_build_object('outcome', 'passed', 'job_id', p_job_id, 'at', now()))
         WHERE b.backup_id = v_backup_id;
    END IF;
    RETURN true;
END
$$;

-- SQL functions with a SET clause are never inlined: each call from plpgsql parsed and planned
-- its body again in each transaction (about 25 us each, four on every job's claim and finish).
-- As plpgsql their plans are kept for the session. 009's, 005's and 018's bodies.
CREATE OR REPLACE FUNCTION pggit.claim_backup_job(p_worker_id text, p_tools text[] DEFAULT NULL, p_lease_seconds integer DEFAULT 60)
RETURNS SETOF pggit.claimed_job
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
BEGIN
    RETURN QUERY SELECT * FROM pggit._claim_job(p_worker_id, p_tools, p_lease_seconds, 'worker');
END
$$;

CREATE OR REPLACE FUNCTION pggit._require_worker_id(p_worker_id text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    RETURN pggit._require_text('p_worker_id', p_worker_id, '^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$', 128,
        'a worker id of 1-128 characters: letters, digits, _ . : @ / - (e.g. worker-01/2)');
END
$$;

CREATE OR REPLACE FUNCTION pggit._notification_event(p_status text, p_attempts integer, p_max_attempts integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    RETURN CASE WHEN p_status IN ('completed', 'cancelled') THEN p_status
                WHEN p_status = 'failed' THEN pggit.backup_job_state(p_status, p_attempts, p_max_attempts)
           END;
END
$$;

CREATE OR REPLACE FUNCTION pggit._webhook_owed(p_spec jsonb, p_event text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    RETURN coalesce(p_spec #>> '{notify,webhook_url}', '') <> ''
       AND CASE p_event
               WHEN 'completed' THEN coalesce(p_spec #>> '{notify,on_success}', 'false') = 'true'
               WHEN 'permanently_failed' THEN coalesce(p_spec #>> '{notify,on_failure}', 'false') = 'true'
               ELSE false
           END;
END
$$;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (26, '026_target_tally')
    ON CONFLICT (version) DO NOTHING;
