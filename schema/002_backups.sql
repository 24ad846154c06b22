-- 002: backup metadata, the job queue, the queue view, and the triggers that keep a backup's
-- status in step with its job and wake workers with NOTIFY.

CREATE TABLE IF NOT EXISTS pggit.backups (
    backup_id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    backup_name       text        NOT NULL,
    backup_type       text        NOT NULL
        CHECK (backup_type IN ('full', 'incremental', 'differential', 'snapshot')),
    backup_tool       text        NOT NULL CHECK (backup_tool ~ '^[a-z][a-z0-9_]{0,31}$'),
    location          text        NOT NULL,
    commit_hash       text        REFERENCES pggit.commits (hash),
    branch_name       text,
    -- in_progress from scheduling until its job ends: queued, running and waiting for a retry
    status            text        NOT NULL DEFAULT 'in_progress'
        CHECK (status IN ('in_progress', 'completed', 'failed', 'cancelled')),
    backup_size       bigint      CHECK (backup_size >= 0),
    compressed_size   bigint      CHECK (compressed_size >= 0),
    compression_type  text,
    checksum          text,
    error_message     text,
    metadata          jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_by        text        NOT NULL DEFAULT session_user,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    completed_at      timestamptz,
    -- set when the tool's output was read back in full (pg_restore, pg_verifybackup, pgbackrest verify, ...)
    verified_at       timestamptz,
    -- set by a restore drill (pggit.schedule_restore_test)
    restore_tested_at   timestamptz,
    restore_test_result text CHECK (restore_test_result IN ('passed', 'failed'))
);
CREATE INDEX IF NOT EXISTS backups_created_at_idx ON pggit.backups (created_at);
CREATE INDEX IF NOT EXISTS backups_commit_hash_idx ON pggit.backups (commit_hash);
CREATE INDEX IF NOT EXISTS backups_branch_name_idx ON pggit.backups (branch_name, created_at);

CREATE TABLE IF NOT EXISTS pggit.backup_jobs (
    job_id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    backup_id         uuid        NOT NULL REFERENCES pggit.backups (backup_id) ON DELETE CASCADE,
    -- restore_test: a restore drill of the job's backup (pggit.schedule_restore_test)
    tool              text        NOT NULL
        CHECK (tool IN ('pgbackrest', 'barman', 'pg_dump', 'pg_basebackup', 'custom', 'restore_test')),
    -- A shell-quoted rendering for people. Workers never run it: they build argv from spec.
    command           text        NOT NULL,
    -- {"tool": ..., "params": {...validated...}, "timeout_seconds": ..., "notify": {...}}
    spec              jsonb       NOT NULL CHECK (jsonb_typeof(spec) = 'object'),
    -- Jobs with the same target (a stanza, a Barman server, a database) never run at once.
    target            text,
    status            text        NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    priority          integer     NOT NULL DEFAULT 5 CHECK (priority BETWEEN 0 AND 100),
    attempts          integer     NOT NULL DEFAULT 0 CHECK (attempts BETWEEN 0 AND 1000),
    max_attempts      integer     NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 1000),
    next_retry_at     timestamptz,
    last_error        text,
    output            text,
    result            jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(result) = 'object'),
    metadata          jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    locked_by         text,
    claim_token       bigint      NOT NULL DEFAULT 0,
    -- 'worker' (claim_backup_job, with a token) or 'guide' (get_next_backup_job, without one):
    -- the guide's token-less complete/fail calls may only act on a claim made the guide's way
    claimed_via       text        CHECK (claimed_via IN ('worker', 'guide')),
    -- Set while a worker holds the job: while it runs, and after a cancel until the worker has
    -- stopped the tool (a cancelled job keeps its target busy until then).
    lease_expires_at  timestamptz,
    heartbeat_at      timestamptz,
    created_by        text        NOT NULL DEFAULT session_user,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    completed_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT backup_jobs_running_has_lease
        CHECK (status <> 'running' OR (locked_by IS NOT NULL AND lease_expires_at IS NOT NULL))
);
-- The database, not the workers' memory, keeps two jobs of one target apart: a second claim
-- of the same target fails on this index even when both claims race. A job holds its target
-- while it holds a lease, so a cancelled job's target stays busy until its tool is stopped.
CREATE UNIQUE INDEX IF NOT EXISTS backup_jobs_one_holder_per_target
    ON pggit.backup_jobs (target) WHERE lease_expires_at IS NOT NULL AND target IS NOT NULL;
CREATE INDEX IF NOT EXISTS backup_jobs_claimable_idx
    ON pggit.backup_jobs (priority, created_at) WHERE status IN ('queued', 'failed');
CREATE INDEX IF NOT EXISTS backup_jobs_lease_idx
    ON pggit.backup_jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS backup_jobs_backup_id_idx ON pggit.backup_jobs (backup_id);
CREATE INDEX IF NOT EXISTS backup_jobs_created_at_idx ON pggit.backup_jobs (created_at);

CREATE OR REPLACE VIEW pggit.backup_job_queue AS
SELECT j.job_id,
       j.backup_id,
       b.backup_name,
       j.tool,
       j.status,
       CASE
           WHEN j.status = 'queued' THEN 'ready'
           WHEN j.status = 'running' THEN 'in_progress'
           WHEN j.status = 'failed' AND j.attempts < j.max_attempts THEN 'will_retry'
           WHEN j.status = 'failed' THEN 'permanently_failed'
           ELSE j.status  -- completed, cancelled
       END AS job_state,
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

-- Status changes by hand (the guide's cancel and reset UPDATEs) are limited to what those
-- mean; every other transition goes through the queue functions, which mark themselves with
-- pggit.queue_internal and run as the table owner.
-- SECURITY INVOKER on purpose: current_user must be the caller's, so that only the queue
-- functions (which run as the owner) pass as internal; anyone can SET the marker itself.
CREATE OR REPLACE FUNCTION pggit._backup_jobs_before_update() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_internal boolean;
BEGIN
    NEW.updated_at := now();
    v_internal := coalesce(current_setting('pggit.queue_internal', true), '') = 'on'
        AND (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
            = (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user);
    IF v_internal THEN
        RETURN NEW;
    END IF;
    IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
        -- by hand, attempts and next_retry_at change only with the reset below: anything else
        -- would put a job out of step with its backup (e.g. "permanently failed" by attempts alone)
        IF NEW.attempts IS DISTINCT FROM OLD.attempts OR NEW.next_retry_at IS DISTINCT FROM OLD.next_retry_at THEN
            RAISE EXCEPTION 'backup job %: attempts and next_retry_at change by hand only when resetting it to queued', OLD.job_id
                USING ERRCODE = '55000',
                      HINT = 'UPDATE pggit.backup_jobs SET status = ''queued'', next_retry_at = NULL, attempts = 0 WHERE job_id = ...';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.status = 'cancelled' AND OLD.status IN ('queued', 'running', 'failed') THEN
        -- a running job keeps its lease (and its target) until its worker has stopped the tool
        NEW.completed_at := now();
        NEW.next_retry_at := NULL;
        NEW.attempts := OLD.attempts;
        NEW.last_error := 'cancelled by ' || session_user;
    ELSIF NEW.status = 'queued' AND OLD.status IN ('failed', 'cancelled') THEN
        IF OLD.lease_expires_at IS NOT NULL THEN
            RAISE EXCEPTION 'backup job %: its worker is still stopping the cancelled tool', OLD.job_id
                USING ERRCODE = '55000', HINT = 'try again in a few seconds (at most until ' || OLD.lease_expires_at || ')';
        END IF;
        IF NEW.attempts > OLD.attempts THEN
            RAISE EXCEPTION 'backup job %: a reset may lower attempts, not raise them', OLD.job_id USING ERRCODE = '55000';
        END IF;
        NEW.locked_by := NULL;
        NEW.next_retry_at := NULL;
        NEW.started_at := NULL;
        NEW.completed_at := NULL;
    ELSE
        RAISE EXCEPTION 'backup job %: status % cannot be set to % by hand', OLD.job_id, OLD.status, NEW.status
            USING ERRCODE = '55000',
                  HINT = 'By hand: queued, running or failed -> cancelled; failed or cancelled -> queued. '
                      || 'Workers move jobs with pggit.claim_backup_job, finish_backup_job and fail_backup_job.';
    END IF;
    RETURN NEW;
END
$$;

-- Keeps the backup row in step with its job, in the same transaction, and wakes workers.
CREATE OR REPLACE FUNCTION pggit._backup_jobs_after_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NULL;
    END IF;
    IF NEW.tool = 'restore_test' THEN
        -- a drill never changes its backup's status; a drill that fails for good is its finding
        IF NEW.status = 'failed' AND NEW.attempts >= NEW.max_attempts THEN
            UPDATE pggit.backups b
               SET restore_tested_at = now(), restore_test_result = 'failed',
                   metadata = b.metadata || jsonb_build_object('restore_test', jsonb_build_object(
                       'outcome', 'failed', 'error', NEW.last_error, 'job_id', NEW.job_id, 'at', now()))
             WHERE b.backup_id = NEW.backup_id;
        END IF;
    ELSIF NEW.status IN ('queued', 'running') OR (NEW.status = 'failed' AND NEW.attempts < NEW.max_attempts) THEN
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

    IF NEW.status = 'queued' OR (NEW.status = 'failed' AND NEW.attempts < NEW.max_attempts
                                 AND NEW.next_retry_at <= now()) THEN
        PERFORM pg_notify('pggit_backup_job_ready', NEW.tool);
    ELSIF NEW.status = 'cancelled' AND TG_OP = 'UPDATE' AND OLD.status = 'running' THEN
        PERFORM pg_notify('pggit_backup_job_cancelled', NEW.job_id::text);
    END IF;
    RETURN NULL;
END
$$;

-- A job deleted by hand while its backup is in progress ends that backup: cancelled.
CREATE OR REPLACE FUNCTION pggit._backup_jobs_after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF OLD.tool <> 'restore_test' THEN
        UPDATE pggit.backups b
           SET status = 'cancelled', completed_at = now(), error_message = 'its job was deleted'
         WHERE b.backup_id = OLD.backup_id AND b.status = 'in_progress'
           AND NOT EXISTS (SELECT 1 FROM pggit.backup_jobs j
                            WHERE j.backup_id = b.backup_id AND j.tool <> 'restore_test'
                              AND (j.status IN ('queued', 'running')
                                   OR (j.status = 'failed' AND j.attempts < j.max_attempts)));
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS backup_jobs_after_delete ON pggit.backup_jobs;
CREATE TRIGGER backup_jobs_after_delete
    AFTER DELETE ON pggit.backup_jobs
    FOR EACH ROW EXECUTE FUNCTION pggit._backup_jobs_after_delete();

DROP TRIGGER IF EXISTS backup_jobs_before_update ON pggit.backup_jobs;
CREATE TRIGGER backup_jobs_before_update
    BEFORE UPDATE ON pggit.backup_jobs
    FOR EACH ROW EXECUTE FUNCTION pggit._backup_jobs_before_update();

DROP TRIGGER IF EXISTS backup_jobs_after_change ON pggit.backup_jobs;
CREATE TRIGGER backup_jobs_after_change
    AFTER INSERT OR UPDATE OF status ON pggit.backup_jobs
    FOR EACH ROW EXECUTE FUNCTION pggit._backup_jobs_after_change();

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (2, '002_backups')
    ON CONFLICT (version) DO NOTHING;
