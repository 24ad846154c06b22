-- 010: backup rows change only through their jobs, and jobs are what they were enqueued as.
-- A backup row records facts (status, sizes, checksum, location, verification, restore drills):
-- a backup that has a job gets them from that job, through the queue functions; a backup
-- registered by hand gets them from pggit.complete_backup / fail_backup (admin). A job's spec,
-- command, tool and target are fixed when it is enqueued, it is inserted only as `queued`, and
-- its claim columns are written only by the queue functions. By hand there remain the guide's
-- cancel, reset, reprioritisation and deletes (retention), as README's "By hand" says.
--
-- The marker is the one 005 uses: pggit.queue_internal = 'on' (a SET clause on each function of
-- this module that writes these rows) AND current_user = the table's owner. Anyone may SET the
-- marker; only code running as the owner passes, so the trigger functions here are SECURITY
-- INVOKER (current_user must be the caller's).

-- The claim's owner and the hash of its secret token (filled by the queue functions of 009; added
-- here too so that this file stands on its own; both orders are harmless).
ALTER TABLE pggit.backup_jobs ADD COLUMN IF NOT EXISTS claimed_by text;
ALTER TABLE pggit.backup_jobs ADD COLUMN IF NOT EXISTS claim_secret_sha256 bytea;

-- The columns of `p_new` whose values differ from `p_old`, among `p_columns` (all columns but
-- `p_except` when p_columns is NULL). Rows are compared as jsonb so that a column added later is
-- covered without editing the triggers (and a column that does not exist compares equal).
CREATE OR REPLACE FUNCTION pggit._changed_columns(p_old jsonb, p_new jsonb, p_columns text[], p_except text[])
RETURNS text[] LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT coalesce(array_agg(n.key ORDER BY n.key), '{}')
      FROM jsonb_each(p_new) n
     WHERE (p_columns IS NULL OR n.key = ANY (p_columns))
       AND NOT (n.key = ANY (coalesce(p_except, '{}')))
       AND n.value IS DISTINCT FROM p_old -> n.key
$$;

-- The columns among `p_columns` that `p_row` sets to something other than NULL.
CREATE OR REPLACE FUNCTION pggit._set_columns(p_row jsonb, p_columns text[])
RETURNS text[] LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT coalesce(array_agg(c ORDER BY c), '{}')
      FROM unnest(p_columns) c
     WHERE jsonb_typeof(p_row -> c) IS DISTINCT FROM 'null' AND p_row ? c
$$;

-- ---------------------------------------------------------------------------------------------
-- pggit.backup_jobs
-- ---------------------------------------------------------------------------------------------

-- Hand-made UPDATEs: the guide's cancel and reset, priority at any time, max_attempts except on a
-- failed job. What the job is (spec, command, tool, target, backup) never changes; what its
-- claim and its run recorded changes only through the queue functions.
CREATE OR REPLACE FUNCTION pggit._backup_jobs_before_update() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    -- what may change by hand (updated_at is set here); every other column, including any a
    -- later file adds, is either what the job is or what its claim and run recorded
    c_by_hand constant text[] := ARRAY['status', 'priority', 'attempts', 'next_retry_at', 'max_attempts', 'updated_at'];
    c_fixed   constant text[] := ARRAY['job_id', 'backup_id', 'tool', 'command', 'spec', 'target', 'metadata',
                                       'created_by', 'created_at'];
    v_internal boolean;
    v_old      jsonb;
    v_new      jsonb;
    v_changed  text[];
BEGIN
    NEW.updated_at := now();
    v_internal := coalesce(current_setting('pggit.queue_internal', true), '') = 'on'
        AND (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
            = (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user);
    IF v_internal THEN
        RETURN NEW;
    END IF;
    v_old := to_jsonb(OLD);
    v_new := to_jsonb(NEW);
    v_changed := pggit._changed_columns(v_old, v_new, NULL, c_by_hand);
    IF v_changed && c_fixed THEN
        RAISE EXCEPTION 'backup job %: % cannot change after it is enqueued', OLD.job_id, array_to_string(v_changed, ', ')
            USING ERRCODE = '55000',
                  HINT = 'cancel it (UPDATE pggit.backup_jobs SET status = ''cancelled'' WHERE job_id = ...) and schedule a new backup';
    END IF;
    IF cardinality(v_changed) > 0 THEN
        RAISE EXCEPTION 'backup job %: % are written by the queue functions, not by hand', OLD.job_id, array_to_string(v_changed, ', ')
            USING ERRCODE = '55000',
                  HINT = 'By hand: UPDATE pggit.backup_jobs SET status = ''cancelled'' (queued, running or failed jobs), '
                      || 'the reset SET status = ''queued'', next_retry_at = NULL, attempts = 0 (failed or cancelled jobs), '
                      || 'priority, or max_attempts of a job that has not failed.';
    END IF;
    IF NEW.max_attempts IS DISTINCT FROM OLD.max_attempts AND OLD.status = 'failed' AND NEW.status = 'failed' THEN
        -- it would decide, behind its backup's back, whether a failed job is retried or failed for good
        RAISE EXCEPTION 'backup job %: max_attempts of a failed job changes by hand only with the reset to queued', OLD.job_id
            USING ERRCODE = '55000',
                  HINT = 'UPDATE pggit.backup_jobs SET status = ''queued'', next_retry_at = NULL, attempts = 0, max_attempts = N WHERE job_id = ...';
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
        -- back to how it was enqueued: no claim
        NEW.locked_by := NULL;
        NEW.claimed_by := NULL;
        NEW.claim_secret_sha256 := NULL;
        NEW.next_retry_at := NULL;
        NEW.started_at := NULL;
        NEW.completed_at := NULL;
    ELSE
        RAISE EXCEPTION 'backup job %: status % cannot be set to % by hand', OLD.job_id, OLD.status, NEW.status
            USING ERRCODE = '55000',
                  HINT = 'By hand: queued, running or failed -> cancelled; failed or cancelled -> queued. '
                      || 'Workers move jobs with pggit.claim_backup_job, finish_backup_job and fail_claimed_backup_job.';
    END IF;
    RETURN NEW;
END
$$;

-- A job enters the queue as queued, never run, unclaimed; one job decides a backup's outcome, so
-- a backup in progress takes one (restore drills aside, which need a completed backup). The
-- backup row is locked so that two inserts, or an insert and pggit.complete_backup, serialise.
CREATE OR REPLACE FUNCTION pggit._backup_jobs_before_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    c_unclaimed constant text[] := ARRAY['claimed_by', 'claim_secret_sha256', 'claimed_via', 'locked_by',
                                         'lease_expires_at', 'heartbeat_at', 'started_at', 'completed_at', 'output',
                                         'last_error', 'next_retry_at'];
    c_hint      constant text := 'queue work with pggit.backup_pg_dump / backup_pgbackrest / backup_barman / '
                                 'backup_pg_basebackup, pggit.enqueue_backup_job (custom commands) or pggit.schedule_restore_test';
    v_new     jsonb := to_jsonb(NEW);
    v_set     text[];
    v_status  text;
BEGIN
    IF coalesce(current_setting('pggit.queue_internal', true), '') = 'on'
       AND (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
           = (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user) THEN
        RETURN NEW;
    END IF;
    v_set := pggit._set_columns(v_new, c_unclaimed);
    IF coalesce(v_new ->> 'claim_token', '0') NOT IN ('0', '') THEN
        v_set := v_set || 'claim_token'::text;
    END IF;
    IF NEW.result IS DISTINCT FROM '{}'::jsonb THEN
        v_set := v_set || 'result'::text;
    END IF;
    IF NEW.status IS DISTINCT FROM 'queued' OR NEW.attempts IS DISTINCT FROM 0 OR cardinality(v_set) > 0 THEN
        RAISE EXCEPTION 'backup job: a job is enqueued as queued, with attempts 0 and no claim or result (got status %, attempts %; %)',
                coalesce(NEW.status, 'NULL'), coalesce(NEW.attempts::text, 'NULL'),
                CASE WHEN cardinality(v_set) > 0 THEN 'set: ' || array_to_string(v_set, ', ') ELSE 'nothing else set' END
            USING ERRCODE = '55000', HINT = c_hint;
    END IF;
    IF NEW.created_by IS DISTINCT FROM session_user::text THEN
        RAISE EXCEPTION 'backup job: created_by is the login that enqueues it (%), not %', session_user, coalesce(NEW.created_by, 'NULL')
            USING ERRCODE = '55000', HINT = 'leave created_by out';
    END IF;
    SELECT b.status INTO v_status FROM pggit.backups b WHERE b.backup_id = NEW.backup_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NEW;  -- the foreign key reports it
    END IF;
    IF NEW.tool = 'restore_test' THEN
        IF v_status <> 'completed' THEN
            RAISE EXCEPTION 'backup job: backup % is %, and only a completed backup can be restore-tested', NEW.backup_id, v_status
                USING ERRCODE = '55000', HINT = 'SELECT pggit.schedule_restore_test(backup_id) for a completed backup';
        END IF;
    ELSIF v_status <> 'in_progress' THEN
        RAISE EXCEPTION 'backup job: backup % is already %', NEW.backup_id, v_status
            USING ERRCODE = '55000', HINT = 'register a new backup for a new run (pggit.register_backup)';
    ELSIF EXISTS (SELECT 1 FROM pggit.backup_jobs j WHERE j.backup_id = NEW.backup_id AND j.tool <> 'restore_test') THEN
        RAISE EXCEPTION 'backup job: backup % already has a job', NEW.backup_id
            USING ERRCODE = '55000', HINT = 'one job decides a backup''s outcome: register a new backup for another command';
    END IF;
    RETURN NEW;
END
$$;

-- A job that holds a lease (running, or cancelled while its worker still stops the tool) holds
-- its target: deleting it would let a second backup of the same stanza or server start beside
-- the first. Cancel first; delete once the worker let go (or rescue_expired_backup_jobs freed it).
-- A restore drill's target is its own backup, which nothing else backs up: a drill may go (its
-- worker stops at the next heartbeat and removes its scratch copy), so the guide's retention
-- DELETE of completed backups works even while one of them is being restore-tested.
CREATE OR REPLACE FUNCTION pggit._backup_jobs_before_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF coalesce(current_setting('pggit.queue_internal', true), '') = 'on'
       AND (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
           = (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user) THEN
        RETURN OLD;
    END IF;
    IF OLD.lease_expires_at IS NOT NULL AND OLD.tool <> 'restore_test' THEN
        RAISE EXCEPTION 'backup job % of backup % is % and its worker % still holds it: it cannot be deleted now',
                OLD.job_id, OLD.backup_id, OLD.status, coalesce(OLD.locked_by, '?')
            USING ERRCODE = '55000',
                  HINT = 'cancel it first (UPDATE pggit.backup_jobs SET status = ''cancelled'' WHERE job_id = ...); '
                      || 'once its worker has stopped the tool (lease_expires_at is NULL, at the latest at '
                      || OLD.lease_expires_at || ' and the next rescue) it can be deleted';
    END IF;
    RETURN OLD;
END
$$;

-- The triggers that keep a backup in step with its job write the backup row as the queue does.
ALTER FUNCTION pggit._backup_jobs_after_change() SET pggit.queue_internal = 'on';
ALTER FUNCTION pggit._backup_jobs_after_delete() SET pggit.queue_internal = 'on';

DROP TRIGGER IF EXISTS backup_jobs_before_insert ON pggit.backup_jobs;
CREATE TRIGGER backup_jobs_before_insert
    BEFORE INSERT ON pggit.backup_jobs
    FOR EACH ROW EXECUTE FUNCTION pggit._backup_jobs_before_insert();

DROP TRIGGER IF EXISTS backup_jobs_before_delete ON pggit.backup_jobs;
CREATE TRIGGER backup_jobs_before_delete
    BEFORE DELETE ON pggit.backup_jobs
    FOR EACH ROW EXECUTE FUNCTION pggit._backup_jobs_before_delete();

-- ---------------------------------------------------------------------------------------------
-- pggit.backups
-- ---------------------------------------------------------------------------------------------

-- A backup row is a record. By hand it may be renamed (backup_name is a label) or deleted
-- (the guide's retention); every other column is a fact, written by the job or, for a backup
-- registered by hand, by pggit.complete_backup / fail_backup. An INSERT by hand is a registration:
-- in progress, with no facts yet.
CREATE OR REPLACE FUNCTION pggit._backups_before_write() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    c_facts constant text[] := ARRAY['backup_size', 'compressed_size', 'compression_type', 'checksum', 'error_message',
                                     'started_at', 'completed_at', 'verified_at', 'restore_tested_at', 'restore_test_result'];
    v_changed text[];
    v_job     record;
BEGIN
    IF coalesce(current_setting('pggit.queue_internal', true), '') = 'on'
       AND (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
           = (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user) THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        v_changed := pggit._set_columns(to_jsonb(NEW), c_facts);
        IF NEW.status IS DISTINCT FROM 'in_progress' OR cardinality(v_changed) > 0 THEN
            RAISE EXCEPTION 'backup: a backup is registered in progress, without facts (got status %; %)',
                    coalesce(NEW.status, 'NULL'),
                    CASE WHEN cardinality(v_changed) > 0 THEN 'set: ' || array_to_string(v_changed, ', ') ELSE 'no facts set' END
                USING ERRCODE = '55000',
                      HINT = 'SELECT pggit.register_backup(...), then pggit.complete_backup(backup_id, ...) or fail_backup when it ended';
        END IF;
        IF NEW.created_by IS DISTINCT FROM session_user::text THEN
            RAISE EXCEPTION 'backup: created_by is the login that registers it (%), not %', session_user, coalesce(NEW.created_by, 'NULL')
                USING ERRCODE = '55000', HINT = 'leave created_by out';
        END IF;
        RETURN NEW;
    END IF;

    v_changed := pggit._changed_columns(to_jsonb(OLD), to_jsonb(NEW), NULL, ARRAY['backup_name']);
    IF cardinality(v_changed) = 0 THEN
        RETURN NEW;
    END IF;
    SELECT j.job_id, j.status, (j.status IN ('queued', 'running') OR j.status = 'failed' AND j.attempts < j.max_attempts) AS in_play
      INTO v_job
      FROM pggit.backup_jobs j
     WHERE j.backup_id = OLD.backup_id AND j.tool <> 'restore_test'
     ORDER BY j.created_at DESC LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'backup %: % changes only through its job % (%), not by hand',
                OLD.backup_id, array_to_string(v_changed, ', '), v_job.job_id, v_job.status
            USING ERRCODE = '55000',
                  HINT = CASE WHEN v_job.in_play
                              THEN 'workers record a backup with pggit.finish_backup_job or complete_backup_job; to stop it: '
                                   || 'UPDATE pggit.backup_jobs SET status = ''cancelled'' WHERE job_id = ''' || v_job.job_id || ''''
                              ELSE 'its job has ended and recorded the outcome (see pggit.backup_jobs); by hand only backup_name '
                                   || 'may change, and DELETE removes the backup' END;
    END IF;
    RAISE EXCEPTION 'backup %: % is a recorded fact and does not change by hand', OLD.backup_id, array_to_string(v_changed, ', ')
        USING ERRCODE = '55000',
              HINT = CASE WHEN OLD.status = 'in_progress'
                          THEN 'a backup registered by hand ends with pggit.complete_backup(backup_id, size, compressed_size, compression) '
                               || 'or pggit.fail_backup(backup_id, error)'
                          ELSE 'only backup_name may be changed by hand; DELETE removes a backup' END;
END
$$;

-- pg_dump backups made by 0.1.0 were recorded as `full`: one name for one kind in every row
-- (done here, before the trigger below exists). Only backups of pg_dump jobs (scheduled by
-- backup_pg_dump), never a type someone registered by hand.
UPDATE pggit.backups b SET backup_type = 'snapshot'
 WHERE b.backup_tool = 'pg_dump' AND b.backup_type = 'full'
   AND EXISTS (SELECT 1 FROM pggit.backup_jobs j WHERE j.backup_id = b.backup_id AND j.tool = 'pg_dump');

DROP TRIGGER IF EXISTS backups_before_write ON pggit.backups;
CREATE TRIGGER backups_before_write
    BEFORE INSERT OR UPDATE ON pggit.backups
    FOR EACH ROW EXECUTE FUNCTION pggit._backups_before_write();

-- ---------------------------------------------------------------------------------------------
-- The guide's metadata functions
-- ---------------------------------------------------------------------------------------------

-- The guide's defaults: a backup registered with neither a commit nor a branch is linked to the
-- head commit of main, as the original did (with a NOTICE saying so).
CREATE OR REPLACE FUNCTION pggit.register_backup(
    p_backup_name     TEXT,
    p_backup_type     TEXT,
    p_backup_tool     TEXT,
    p_location        TEXT,
    p_commit_hash     TEXT    DEFAULT NULL,
    p_branch_name     TEXT    DEFAULT NULL,
    p_create_snapshot BOOLEAN DEFAULT FALSE,
    p_metadata        JSONB   DEFAULT '{}'
) RETURNS UUID
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_commit      text := p_commit_hash;
    v_branch      text := p_branch_name;
    v_metadata    jsonb := coalesce(p_metadata, '{}'::jsonb);
    v_backup_id   uuid;
BEGIN
    PERFORM pggit._require_text('p_backup_name', p_backup_name, '^[A-Za-z0-9][A-Za-z0-9_.:@+-]*$', 200,
        'a name of 1-200 characters: letters, digits, _ . : @ + -');
    PERFORM pggit._require_enum('p_backup_type', p_backup_type, ARRAY['full', 'incremental', 'differential', 'snapshot']);
    PERFORM pggit._require_text('p_backup_tool', p_backup_tool, '^[a-z][a-z0-9_]{0,31}$', 32,
        'a tool name such as pgbackrest, barman, pg_dump, pg_basebackup or custom (lower case letters, digits, _)');
    PERFORM pggit._require_text('p_location', p_location, '^[^[:cntrl:]]+$', 2048,
        'where the backup lives, e.g. s3://bucket/custom-001 or /backups/x (no control characters, at most 2048 characters)');
    IF jsonb_typeof(v_metadata) <> 'object' OR length(v_metadata::text) > 65536 THEN
        PERFORM pggit._invalid('p_metadata', 'must be a JSON object of at most 64 kB', 'e.g. {"script": "nightly"}');
    END IF;
    IF v_commit IS NULL AND v_branch IS NULL THEN
        SELECT br.head_commit_hash INTO v_commit FROM pggit.branches br WHERE br.name = 'main';
        IF v_commit IS NULL THEN
            PERFORM pggit._invalid('p_commit_hash', 'p_commit_hash and p_branch_name are both NULL, and branch main has no head commit to link the backup to',
                'give p_commit_hash, or p_branch_name of a branch that has a head commit');
        END IF;
        v_branch := 'main';
        RAISE NOTICE 'pggit: backup % linked to the head commit of main (%): neither p_commit_hash nor p_branch_name was given',
            p_backup_name, left(v_commit, 12);
    ELSIF v_commit IS NOT NULL THEN
        SELECT br.name INTO v_branch
          FROM pggit.commits c LEFT JOIN pggit.branches br ON br.id = c.branch_id
         WHERE c.hash = p_commit_hash;
        IF NOT FOUND THEN
            PERFORM pggit._invalid('p_commit_hash', format('no commit %s', pggit._show(p_commit_hash)),
                'the hash of an existing commit, e.g. (SELECT head_commit_hash FROM pggit.branches WHERE name = ''main'')');
        END IF;
        IF p_branch_name IS NOT NULL AND v_branch IS DISTINCT FROM p_branch_name THEN
            PERFORM pggit._invalid('p_branch_name', format('commit %s is on branch %s, not %s',
                    left(p_commit_hash, 12), coalesce(v_branch, 'none'), pggit._show(p_branch_name)),
                'leave p_branch_name NULL when giving p_commit_hash, or give the commit''s own branch');
        END IF;
    ELSE
        v_commit := pggit._require_branch_head('p_branch_name', p_branch_name);
    END IF;
    IF coalesce(p_create_snapshot, false) THEN
        -- Temporal snapshots belong to pgGit core; this module records the request.
        v_metadata := v_metadata || '{"snapshot_requested": true}';
        RAISE NOTICE 'pggit: temporal snapshots are made by pgGit core; recorded as requested in the backup''s metadata';
    END IF;

    INSERT INTO pggit.backups (backup_name, backup_type, backup_tool, location, commit_hash, branch_name, metadata)
    VALUES (p_backup_name, p_backup_type, p_backup_tool, p_location, v_commit, v_branch, v_metadata)
    RETURNING backup_id INTO v_backup_id;
    RETURN v_backup_id;
END
$$;

-- The job a backup's outcome comes from (restore drills aside), or NULL for one registered by hand.
CREATE OR REPLACE FUNCTION pggit._backup_job_of(p_backup_id uuid) RETURNS pggit.backup_jobs
LANGUAGE sql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT j.* FROM pggit.backup_jobs j
     WHERE j.backup_id = p_backup_id AND j.tool <> 'restore_test'
     ORDER BY j.created_at DESC LIMIT 1
$$;

-- The refusal for a backup that changes only through its job.
CREATE OR REPLACE FUNCTION pggit._refuse_backup_with_job(p_function text, p_backup pggit.backups, p_job pggit.backup_jobs)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'pggit: backup % is %, with its job % %: it changes only through that job, not with %',
            p_backup.backup_id, p_backup.status, p_job.job_id,
            CASE WHEN p_job.status = 'failed' AND p_job.attempts < p_job.max_attempts THEN 'waiting for a retry'
                 WHEN p_job.status = 'failed' THEN 'failed for good'
                 ELSE p_job.status END,
            p_function
        USING ERRCODE = '55000',
              HINT = CASE WHEN p_job.status = 'completed'
                          THEN 'its job completed it; a completed backup''s outcome never changes'
                          WHEN p_job.status = 'cancelled' OR p_job.status = 'failed' AND p_job.attempts >= p_job.max_attempts
                          THEN 'its job has ended and decided the backup''s outcome; to run it again, reset the job: UPDATE '
                               || 'pggit.backup_jobs SET status = ''queued'', next_retry_at = NULL, attempts = 0 WHERE job_id = '''
                               || p_job.job_id || ''''
                          ELSE 'a worker completes it with pggit.finish_backup_job or complete_backup_job, or fails it; '
                               || 'to stop it: UPDATE pggit.backup_jobs SET status = ''cancelled'' WHERE job_id = '''
                               || p_job.job_id || '''' END;
END
$$;

-- The guide's completion. For a backup registered by hand without a job (admin): completes it.
-- For a backup whose job has completed (the original listener's second call, after
-- complete_backup_job): records sizes and compression type once, leaving the status alone; the
-- worker role may do this, but only the login that claimed the job the guide's way. A backup
-- whose job is queued, running or waiting for a retry changes only through that job.
CREATE OR REPLACE FUNCTION pggit.complete_backup(
    p_backup_id        UUID,
    p_backup_size      BIGINT DEFAULT NULL,
    p_compressed_size  BIGINT DEFAULT NULL,
    p_compression_type TEXT   DEFAULT NULL
) RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
DECLARE
    v_backup pggit.backups;
    v_job    pggit.backup_jobs;
    v_admin  boolean := pg_has_role(session_user, 'pggit_backup_admin', 'MEMBER');
BEGIN
    IF p_backup_size < 0 THEN
        PERFORM pggit._invalid('p_backup_size', format('%s is negative', p_backup_size), 'bytes, 0 or more, or NULL');
    END IF;
    IF p_compressed_size < 0 THEN
        PERFORM pggit._invalid('p_compressed_size', format('%s is negative', p_compressed_size), 'bytes, 0 or more, or NULL');
    END IF;
    IF p_compression_type IS NOT NULL THEN
        PERFORM pggit._require_text('p_compression_type', p_compression_type, '^[A-Za-z0-9_.:+-]+$', 64,
            'a compression name such as gzip, lz4, zstd or none');
    END IF;
    -- locked first, so that a job enqueued meanwhile is seen by the statements below
    SELECT * INTO v_backup FROM pggit.backups b WHERE b.backup_id = p_backup_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pggit._invalid('p_backup_id', format('no backup with id %s', coalesce(p_backup_id::text, 'NULL')),
            'SELECT backup_id, status FROM pggit.list_backups() lists the known backups');
    END IF;
    v_job := pggit._backup_job_of(p_backup_id);

    IF v_job.job_id IS NOT NULL AND v_job.status = 'completed' AND v_backup.status = 'completed' THEN
        -- claimed_by is NULL only for a job claimed before 009 recorded the claim's login
        IF NOT v_admin AND NOT (v_job.claimed_via = 'guide'
                                AND coalesce(v_job.claimed_by, session_user::text) = session_user::text) THEN
            RAISE EXCEPTION 'pggit: backup % was completed by its job %, which login % did not claim with get_next_backup_job',
                    p_backup_id, v_job.job_id, session_user
                USING ERRCODE = '42501',
                      HINT = 'only the login that claimed and completed the job (or pggit_backup_admin) records its sizes';
        END IF;
        IF num_nonnulls(v_backup.backup_size, v_backup.compressed_size, v_backup.compression_type) > 0
           OR v_backup.metadata ? 'sizes_recorded_by' THEN
            RAISE EXCEPTION 'pggit: backup % is completed and its sizes are already recorded (backup_size %, compressed_size %, compression_type %)',
                    p_backup_id, coalesce(v_backup.backup_size::text, 'NULL'), coalesce(v_backup.compressed_size::text, 'NULL'),
                    coalesce(v_backup.compression_type, 'NULL')
                USING ERRCODE = '55000',
                      HINT = 'a backup''s facts are recorded once; SELECT * FROM pggit.get_backup_info(backup_id) shows them';
        END IF;
        UPDATE pggit.backups b
           SET backup_size = p_backup_size, compressed_size = p_compressed_size, compression_type = p_compression_type,
               metadata = b.metadata || jsonb_build_object('sizes_recorded_by', jsonb_build_object(
                   'login', session_user, 'at', now(), 'function', 'complete_backup'))
         WHERE b.backup_id = p_backup_id;
        RETURN true;
    END IF;
    IF v_job.job_id IS NOT NULL THEN
        PERFORM pggit._refuse_backup_with_job('pggit.complete_backup', v_backup, v_job);
    END IF;
    IF v_backup.status <> 'in_progress' THEN
        RAISE EXCEPTION 'pggit: backup % is %, not in progress', p_backup_id, v_backup.status
            USING ERRCODE = '55000',
                  HINT = 'only a backup in progress can be completed; register a new backup for a new run';
    END IF;
    IF NOT v_admin THEN
        RAISE EXCEPTION 'pggit: backup % was registered by hand: only pggit_backup_admin completes it', p_backup_id
            USING ERRCODE = '42501', HINT = 'complete it as a login granted pggit_backup_admin';
    END IF;
    UPDATE pggit.backups b
       SET status = 'completed', completed_at = now(), error_message = NULL,
           backup_size = p_backup_size, compressed_size = p_compressed_size, compression_type = p_compression_type
     WHERE b.backup_id = p_backup_id;
    RETURN true;
END
$$;

-- The guide's failure, for a backup registered by hand without a job (admin). Never flips a
-- backup that has ended: that returns false, as before.
CREATE OR REPLACE FUNCTION pggit.fail_backup(
    p_backup_id     UUID,
    p_error_message TEXT
) RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'on' AS $$
DECLARE
    v_backup pggit.backups;
    v_job    pggit.backup_jobs;
BEGIN
    IF p_error_message IS NULL OR btrim(p_error_message) = '' THEN
        PERFORM pggit._invalid('p_error_message', 'must not be empty', 'what went wrong, for the operator');
    END IF;
    SELECT * INTO v_backup FROM pggit.backups b WHERE b.backup_id = p_backup_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pggit._invalid('p_backup_id', format('no backup with id %s', coalesce(p_backup_id::text, 'NULL')),
            'SELECT backup_id, status FROM pggit.list_backups() lists the known backups');
    END IF;
    v_job := pggit._backup_job_of(p_backup_id);
    IF v_job.job_id IS NOT NULL THEN
        PERFORM pggit._refuse_backup_with_job('pggit.fail_backup', v_backup, v_job);
    END IF;
    UPDATE pggit.backups b
       SET status = 'failed', completed_at = now(), error_message = left(p_error_message, 8192)
     WHERE b.backup_id = p_backup_id AND b.status = 'in_progress';
    RETURN FOUND;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- pg_dump backups are recorded as `snapshot`, as the original did: a logical, point-in-time copy
-- (pg_dump runs in one exported snapshot), restored only as a whole by pg_restore and never the
-- base of an incremental or differential backup, unlike the physical `full` backups of
-- pg_basebackup, pgBackRest and Barman. Only the backup type differs from 004.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION pggit.backup_pg_dump(
    p_branch_name TEXT DEFAULT 'main',
    p_schema      TEXT DEFAULT NULL,
    p_format      TEXT DEFAULT 'custom',
    p_output_path TEXT DEFAULT '/backups',
    p_options     JSONB DEFAULT '{}'
) RETURNS UUID
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_options  jsonb;
    v_common   jsonb;
    v_head     text;
    v_dir      text;
    v_level    bigint;
    v_jobs     bigint;
    v_params   jsonb;
    v_argv     text[];
BEGIN
    v_head := pggit._require_branch_head('p_branch_name', p_branch_name);
    IF p_schema IS NOT NULL THEN
        PERFORM pggit._require_text('p_schema', p_schema, '^[A-Za-z_][A-Za-z0-9_]{0,62}$', 63,
            'the exact name of an existing schema (letters, digits, _), or NULL for the whole database');
        IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = p_schema) THEN
            PERFORM pggit._invalid('p_schema', format('no schema named %s in database %s', pggit._show(p_schema), current_database()),
                'the exact name of an existing schema, or NULL for the whole database');
        END IF;
    END IF;
    PERFORM pggit._require_enum('p_format', p_format, ARRAY['custom', 'directory', 'tar', 'plain']);
    v_dir := pggit._require_dir('p_output_path', p_output_path);
    v_options := pggit._require_options('p_options', p_options, ARRAY[
        'compression_level', 'jobs', 'priority', 'max_attempts', 'timeout_seconds',
        'webhook_url', 'notify_on_success', 'notify_on_failure']);
    v_common := pggit._common_options('p_options', v_options);
    v_level := pggit._opt_int('p_options', v_options, 'compression_level', 0, 9);
    IF v_level IS NOT NULL AND p_format = 'tar' THEN
        PERFORM pggit._invalid('p_options.compression_level', 'pg_dump cannot compress the tar format',
            'use the custom, directory or plain format to compress, or leave compression_level out');
    END IF;
    v_jobs := pggit._opt_int('p_options', v_options, 'jobs', 1, 64);
    IF v_jobs IS NOT NULL AND p_format IN ('tar', 'plain') THEN
        PERFORM pggit._invalid('p_options.jobs', format('parallel jobs are not possible with the %s format', p_format),
            'use the directory format for a parallel dump (pg_dump -j), or leave jobs out');
    ELSIF v_jobs IS NOT NULL AND p_format = 'custom' THEN
        RAISE NOTICE 'pggit: pg_dump cannot dump the custom format in parallel; jobs=% is kept for a parallel restore (pg_restore -j %). Use the directory format for a parallel dump.', v_jobs, v_jobs;
    END IF;

    v_params := jsonb_strip_nulls(jsonb_build_object(
        'database', current_database(), 'schema', p_schema, 'format', p_format, 'output_dir', v_dir,
        'compression_level', v_level, 'jobs', v_jobs));
    v_argv := ARRAY['pg_dump', '--format=' || p_format]
              || CASE WHEN p_schema IS NULL THEN ARRAY[]::text[] ELSE ARRAY['--schema="' || p_schema || '"'] END
              || CASE WHEN v_level IS NULL THEN ARRAY[]::text[] ELSE ARRAY['--compress=' || v_level] END
              || CASE WHEN v_jobs IS NULL OR p_format <> 'directory' THEN ARRAY[]::text[] ELSE ARRAY['--jobs=' || v_jobs] END
              || ARRAY['--file=' || v_dir || '/{name}', '--dbname=' || current_database()];
    RETURN pggit._schedule_backup('pg_dump', 'snapshot', p_branch_name, v_head, v_params, v_common,
        'pg_dump:' || current_database() || ':' || coalesce(p_schema, '*'), v_argv,
        'file://' || v_dir || '/', v_options);
END
$$;


-- ---------------------------------------------------------------------------------------------
-- Grants
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    v_fn regprocedure;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'pggit'::regnamespace
           AND p.proname = ANY (ARRAY['_changed_columns', '_set_columns', '_backup_jobs_before_insert',
                                      '_backup_jobs_before_delete', '_backups_before_write', '_backup_job_of',
                                      '_refuse_backup_with_job'])
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
    END LOOP;
END
$$;
-- the triggers run as whoever writes the tables by hand: the admin, and the operator's cancel / reset
GRANT EXECUTE ON FUNCTION pggit._changed_columns(jsonb, jsonb, text[], text[]),
                          pggit._set_columns(jsonb, text[])
    TO pggit_backup_operator, pggit_backup_admin;
-- fail_backup is the admin's, for backups registered by hand. complete_backup stays the worker's
-- for one case only, checked inside: recording sizes after the job the same login completed.
REVOKE EXECUTE ON FUNCTION pggit.fail_backup(uuid, text) FROM pggit_backup_worker;
GRANT EXECUTE ON FUNCTION pggit.fail_backup(uuid, text),
                          pggit.complete_backup(uuid, bigint, bigint, text)
    TO pggit_backup_admin;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (10, '010_backup_guards')
    ON CONFLICT (version) DO NOTHING;
