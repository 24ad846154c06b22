-- 019: what `pggit-supervisor status` and its `--check` probe read (issue 11). The worst bug a
-- backup service can ship is a backup that silently did not happen, so the database keeps what
-- a monitor needs to tell: which workers were seen and when (a worker records itself every few
-- seconds, bound to its login as 014 binds a schedule host), which permanent failures an
-- operator has acknowledged (who, when, why), the queue's numbers, and per target (a retention
-- target's identity, 015) the newest verified backup, the last failure and the last drill.
-- Ages are computed here from the server's clock; a missing time stays NULL, never 0.

CREATE TABLE IF NOT EXISTS pggit.backup_workers (
    worker_id      text PRIMARY KEY CHECK (worker_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$'),
    -- the part before the first / (as 014's schedule host): one host speaks through one login
    host_name      text NOT NULL,
    -- the machine the worker process runs on (its OS host name) and its process
    machine        text NOT NULL,
    pid            integer NOT NULL CHECK (pid > 0),
    version        text NOT NULL,
    database_name  text NOT NULL,
    tools          text[] NOT NULL,
    started_at     timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    current_job_id uuid,
    -- set when the worker stopped in order; a new process of the same id clears it
    stopped_at     timestamptz,
    login          text NOT NULL DEFAULT session_user
);
CREATE INDEX IF NOT EXISTS backup_workers_host ON pggit.backup_workers (host_name);

-- A worker row counts as its host's (and keeps other logins from writing that host's rows)
-- while it was seen this recently and has not stopped: the span of a schedule host's (014's
-- _schedule_host_alive), so one host is alive or not the same way for both.
-- Refuses p_host to a login other than the one whose live rows carry it (42501).
CREATE OR REPLACE FUNCTION pggit._require_worker_host_login(p_host text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_login text;
BEGIN
    SELECT w.login INTO v_login FROM pggit.backup_workers w
     WHERE w.host_name = p_host AND w.login <> session_user AND w.stopped_at IS NULL
       AND w.last_seen_at > now() - pggit._schedule_host_alive()
     ORDER BY w.last_seen_at DESC LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pggit: worker host % is carried by login %, not %', p_host, v_login, session_user
            USING ERRCODE = '42501',
                  HINT = 'give each host its own worker id (the part before /); a host moved to a new login takes its name back '
                      || 'once the old one has stopped or been silent for ' || pggit._schedule_host_alive();
    END IF;
END
$$;

-- Called by each worker every few seconds (and at each job's start and end): who it is, that it
-- is alive, and which job it runs. p_current_job must be a job this login claimed.
CREATE OR REPLACE FUNCTION pggit.record_worker(
    p_worker_id   text,
    p_machine     text,
    p_pid         integer,
    p_version     text,
    p_database    text,
    p_tools       text[],
    p_started_at  timestamptz,
    p_current_job uuid DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    c_tools constant text[] := ARRAY['pgbackrest', 'barman', 'pg_dump', 'pg_basebackup', 'custom', 'restore_test'];
    v_host  text := split_part(pggit._require_worker_id(p_worker_id), '/', 1);
    v_tool  text;
BEGIN
    PERFORM pggit._require_text('p_machine', p_machine, '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}$', 253,
        'the OS host name of the worker''s machine');
    IF p_pid IS NULL OR p_pid < 1 OR p_pid > 4194304 THEN
        PERFORM pggit._invalid('p_pid', format('%s is out of range', coalesce(p_pid::text, 'NULL')),
            'the worker''s process id, 1 to 4194304');
    END IF;
    PERFORM pggit._require_text('p_version', p_version, '^[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}$', 64,
        'the pggit-supervisor version, e.g. 0.1.0');
    IF p_database IS NULL OR length(p_database) NOT BETWEEN 1 AND 63 OR pggit._has_control_character(p_database) THEN
        PERFORM pggit._invalid('p_database', format('%s is not allowed', pggit._show(p_database)),
            'the name the config gives the database the worker serves: 1-63 printable characters');
    END IF;
    IF p_tools IS NULL OR cardinality(p_tools) > 16 OR array_position(p_tools, NULL) IS NOT NULL THEN
        PERFORM pggit._invalid('p_tools', 'must be an array of at most 16 tool names', array_to_string(c_tools, ', '));
    END IF;
    FOREACH v_tool IN ARRAY p_tools LOOP
        PERFORM pggit._require_enum('p_tools', v_tool, c_tools);
    END LOOP;
    IF p_started_at IS NULL OR p_started_at > now() + interval '5 minutes' THEN
        PERFORM pggit._invalid('p_started_at', format('%s is not a time up to now', coalesce(p_started_at::text, 'NULL')),
            'when the worker process started');
    END IF;
    IF p_current_job IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pggit.backup_jobs j WHERE j.job_id = p_current_job AND j.claimed_by = session_user) THEN
        PERFORM pggit._invalid('p_current_job', format('%s is not a job this login claimed', p_current_job),
            'the job_id claim_backup_job returned to this worker, or NULL while idle');
    END IF;
    PERFORM pggit._require_worker_host_login(v_host);
    -- this host's rows of workers long gone (a pool made smaller, a renamed database) go, so
    -- that status lists what may still come back, not every worker the host ever had
    DELETE FROM pggit.backup_workers w
     WHERE w.host_name = v_host AND w.login = session_user AND w.worker_id <> p_worker_id
       AND w.last_seen_at < now() - interval '7 days';
    INSERT INTO pggit.backup_workers AS w (worker_id, host_name, machine, pid, version, database_name, tools,
                                           started_at, last_seen_at, current_job_id, stopped_at, login)
    VALUES (p_worker_id, v_host, p_machine, p_pid, p_version, p_database, p_tools, p_started_at, now(),
            p_current_job, NULL, session_user)
    ON CONFLICT (worker_id) DO UPDATE
       SET machine = EXCLUDED.machine, pid = EXCLUDED.pid, version = EXCLUDED.version,
           database_name = EXCLUDED.database_name, tools = EXCLUDED.tools, started_at = EXCLUDED.started_at,
           last_seen_at = now(), current_job_id = EXCLUDED.current_job_id, stopped_at = NULL,
           login = session_user;
END
$$;

-- An orderly stop: the row stays (last seen, now stopped) so `status` still shows the worker
-- went away on purpose. False when the row is not this login's.
CREATE OR REPLACE FUNCTION pggit.record_worker_stopped(p_worker_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
BEGIN
    PERFORM pggit._require_worker_id(p_worker_id);
    UPDATE pggit.backup_workers w
       SET stopped_at = now(), last_seen_at = now(), current_job_id = NULL
     WHERE w.worker_id = p_worker_id AND w.login = session_user;
    RETURN FOUND;
END
$$;

-- The workers as monitoring reads them: silent_seconds is the time since it was last seen.
-- Whether that is dead is the reader's call (the supervisor's worker_silence setting).
CREATE OR REPLACE VIEW pggit.backup_worker_status AS
SELECT w.worker_id, w.host_name, w.machine, w.pid, w.version, w.database_name, w.tools, w.started_at,
       w.last_seen_at, extract(epoch FROM now() - w.last_seen_at)::double precision AS silent_seconds,
       w.current_job_id, w.stopped_at, w.login
  FROM pggit.backup_workers w;

-- Acknowledgements of permanent failures: one per job, naming the failure it acknowledged (the
-- job's completed_at then); a job reset and failed again is a new failure, unacknowledged.
CREATE TABLE IF NOT EXISTS pggit.backup_failure_acknowledgements (
    job_id          uuid PRIMARY KEY REFERENCES pggit.backup_jobs ON DELETE CASCADE,
    failed_at       timestamptz NOT NULL,
    note            text NOT NULL CHECK (length(note) BETWEEN 1 AND 1000),
    acknowledged_by text NOT NULL DEFAULT session_user,
    acknowledged_at timestamptz NOT NULL DEFAULT now()
);

-- An operator says a permanent failure has been seen to: it no longer makes `status --check`
-- CRITICAL. Returns when it was recorded; acknowledging again replaces the note.
CREATE OR REPLACE FUNCTION pggit.acknowledge_failure(p_job_id uuid, p_note text) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_job pggit.backup_jobs;
    v_at  timestamptz;
BEGIN
    IF p_job_id IS NULL THEN
        PERFORM pggit._invalid('p_job_id', 'must not be NULL',
            'the job_id of a permanently failed job: SELECT job_id FROM pggit.backup_permanent_failures');
    END IF;
    IF p_note IS NULL OR btrim(p_note) = '' OR length(p_note) > 1000 THEN
        PERFORM pggit._invalid('p_note', 'must be 1-1000 characters of text', 'what was done about it, for the next operator');
    END IF;
    IF pggit._has_control_character(p_note) THEN
        PERFORM pggit._invalid('p_note', 'contains a control character', 'one printable line: no escape, tab or line break');
    END IF;
    SELECT * INTO v_job FROM pggit.backup_jobs j WHERE j.job_id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pggit._invalid('p_job_id', format('no job with id %s', p_job_id),
            'SELECT job_id FROM pggit.backup_permanent_failures lists the permanently failed jobs');
    END IF;
    IF pggit.backup_job_state(v_job.status, v_job.attempts, v_job.max_attempts) <> 'permanently_failed' THEN
        PERFORM pggit._invalid('p_job_id', format('job %s is %s, not permanently_failed', p_job_id,
                pggit.backup_job_state(v_job.status, v_job.attempts, v_job.max_attempts)),
            'only a permanently failed job is acknowledged (one that will still retry has not failed for good)');
    END IF;
    INSERT INTO pggit.backup_failure_acknowledgements AS a (job_id, failed_at, note)
    VALUES (p_job_id, coalesce(v_job.completed_at, v_job.updated_at), p_note)
    ON CONFLICT (job_id) DO UPDATE
       SET failed_at = EXCLUDED.failed_at, note = EXCLUDED.note, acknowledged_by = session_user,
           acknowledged_at = now()
    RETURNING a.acknowledged_at INTO v_at;
    RETURN v_at;
END
$$;

-- Every permanently failed job with its acknowledgement, if the failure it names is this one.
CREATE OR REPLACE VIEW pggit.backup_permanent_failures AS
SELECT j.job_id, j.backup_id, b.backup_name, j.tool, j.target, j.attempts, j.max_attempts,
       coalesce(j.completed_at, j.updated_at) AS failed_at, j.last_error,
       a.acknowledged_at, a.acknowledged_by, a.note AS acknowledgement_note,
       a.job_id IS NOT NULL AS acknowledged
  FROM pggit.backup_jobs j
  JOIN pggit.backups b ON b.backup_id = j.backup_id
  LEFT JOIN pggit.backup_failure_acknowledgements a
         ON a.job_id = j.job_id AND a.failed_at = coalesce(j.completed_at, j.updated_at)
 WHERE pggit.backup_job_state(j.status, j.attempts, j.max_attempts) = 'permanently_failed';

-- The guide's queue statistics, as one row: jobs in play whatever their age, ended ones of the
-- last 24 hours (by when they ended: a job queued days ago that failed for good now counts), and
-- how long the oldest ready job has waited (NULL: none is waiting).
CREATE OR REPLACE VIEW pggit.backup_queue_statistics AS
SELECT count(*) FILTER (WHERE s.state = 'ready') AS ready,
       count(*) FILTER (WHERE s.state = 'in_progress') AS in_progress,
       count(*) FILTER (WHERE s.state = 'will_retry') AS will_retry,
       count(*) FILTER (WHERE s.state = 'completed' AND s.ended_at > now() - interval '24 hours') AS completed_24h,
       count(*) FILTER (WHERE s.state = 'permanently_failed' AND s.ended_at > now() - interval '24 hours')
           AS permanently_failed_24h,
       count(*) FILTER (WHERE s.state = 'cancelled' AND s.ended_at > now() - interval '24 hours') AS cancelled_24h,
       extract(epoch FROM now() - min(s.created_at) FILTER (WHERE s.state = 'ready'))::double precision
           AS oldest_ready_seconds
  FROM (SELECT pggit.backup_job_state(j.status, j.attempts, j.max_attempts) AS state, j.created_at,
               coalesce(j.completed_at, j.updated_at) AS ended_at
          FROM pggit.backup_jobs j) s;

-- One target (a retention target, 015: checked and in its canonical form) as monitoring sees
-- it: its newest verified backup, its last failed attempt, its last restore drill. Reads the
-- jobs' spec (as retention_plan does) to tell whose backup is whose, so it runs as the owner.
CREATE OR REPLACE FUNCTION pggit.backup_target_status(p_target jsonb)
RETURNS TABLE (target jsonb, backups bigint, verified_backups bigint, newest_verified_id uuid,
               newest_verified_name text, newest_verified_at timestamptz, newest_verified_seconds double precision,
               last_failure_job_id uuid, last_failure_at timestamptz, last_failure_state text, last_failure_error text,
               last_drill_backup_id uuid, last_drill_at timestamptz, last_drill_result text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_target jsonb := pggit._require_retention_target(p_target);
BEGIN
    RETURN QUERY
    WITH mine AS (
        SELECT b.* FROM pggit.backups b
          JOIN LATERAL (SELECT pggit._retention_params(b.backup_id, b.backup_tool) AS params) j ON true
         WHERE b.backup_tool = v_target ->> 'tool'
           AND pggit._retention_identity(b.backup_tool, j.params) = v_target
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
      LEFT JOIN drill d ON true;
END
$$;

-- Rights: readers (monitoring) read the views and the target status; workers record
-- themselves; operators acknowledge. The tables stay with their owner.
REVOKE ALL ON pggit.backup_workers, pggit.backup_failure_acknowledgements, pggit.backup_worker_status,
              pggit.backup_permanent_failures, pggit.backup_queue_statistics FROM PUBLIC;
GRANT SELECT ON pggit.backup_worker_status, pggit.backup_permanent_failures, pggit.backup_queue_statistics,
                pggit.backup_failure_acknowledgements
    TO pggit_backup_reader;
REVOKE ALL ON FUNCTION pggit._require_worker_host_login(text),
                       pggit.record_worker(text, text, integer, text, text, text[], timestamptz, uuid),
                       pggit.record_worker_stopped(text),
                       pggit.acknowledge_failure(uuid, text),
                       pggit.backup_target_status(jsonb)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.backup_target_status(jsonb) TO pggit_backup_reader;
GRANT EXECUTE ON FUNCTION pggit.record_worker(text, text, integer, text, text, text[], timestamptz, uuid),
                          pggit.record_worker_stopped(text)
    TO pggit_backup_worker;
GRANT EXECUTE ON FUNCTION pggit.acknowledge_failure(uuid, text) TO pggit_backup_operator;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (19, '019_status')
    ON CONFLICT (version) DO NOTHING;
