-- 014: schedules, decided in the database. The supervisors compute when a schedule's slots fall
-- (cron, timezone, catch-up: Python, pggit_supervisor/scheduler.py); whether a slot becomes a job
-- is decided here, once: a slot is a row with the primary key (schedule_name, slot_time), so any
-- number of supervisors carrying the same schedules record each slot exactly once, with no
-- leader. An enqueued slot names the backup it scheduled through the same pggit.backup_*
-- function an operator calls (so the validation is that function's); a skipped one says why.
-- Each host's definition of a schedule is kept with a fingerprint. While two live hosts define a
-- same-named schedule differently, both are told the other's name (and log it), and the slots
-- follow the definition that recorded the latest one (the established definition), carried on by
-- the hosts that still hold it: a host whose configuration changed first, or was changed by
-- mistake, cannot stop the schedule on every host. A new definition takes over once no live
-- host holds the established one (every host was updated, or the others went silent).

CREATE TABLE IF NOT EXISTS pggit.backup_schedules (
    schedule_name text PRIMARY KEY CHECK (schedule_name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    -- slots are counted from here: a new schedule does not fire for the times before it existed
    registered_at timestamptz NOT NULL,
    -- the definition that recorded the latest slot, and the host it came from
    fingerprint   text NOT NULL,
    definition    jsonb NOT NULL,
    defined_by    text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Who carries a schedule, with which definition, last seen when: what a conflict is read from.
CREATE TABLE IF NOT EXISTS pggit.backup_schedule_hosts (
    schedule_name text NOT NULL REFERENCES pggit.backup_schedules ON DELETE CASCADE,
    host          text NOT NULL,
    fingerprint   text NOT NULL,
    definition    jsonb NOT NULL,
    seen_at       timestamptz NOT NULL,
    -- the login that speaks for this host: another login may not (it would replace the host's
    -- definition, hide a conflict or record slots in its name) until the host has gone silent
    login         text NOT NULL DEFAULT session_user,
    PRIMARY KEY (schedule_name, host)
);

CREATE TABLE IF NOT EXISTS pggit.backup_schedule_slots (
    schedule_name text NOT NULL REFERENCES pggit.backup_schedules ON DELETE CASCADE,
    slot_time     timestamptz NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('enqueued', 'skipped')),
    -- missed: older than starting_deadline, or passed over by the catch_up policy;
    -- overlap: the previous run was still queued or running (overlap: skip);
    -- disabled: the schedule says enabled: false; superseded: a full pgBackRest backup of the
    -- same stanza was pending; refused: the backup_* function refused the arguments
    reason        text CHECK (reason IN ('missed', 'overlap', 'disabled', 'superseded', 'refused')),
    backup_id     uuid REFERENCES pggit.backups ON DELETE SET NULL,
    fingerprint   text NOT NULL,
    recorded_by   text NOT NULL,
    recorded_login text NOT NULL DEFAULT session_user,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    detail        text,
    PRIMARY KEY (schedule_name, slot_time),
    CHECK ((outcome = 'enqueued') = (reason IS NULL))
);
CREATE INDEX IF NOT EXISTS backup_schedule_slots_backup ON pggit.backup_schedule_slots (backup_id);

-- A host's definition counts towards a conflict while the host was seen this recently: a host
-- taken out of service stops blocking its schedules' slots after this long.
CREATE OR REPLACE FUNCTION pggit._schedule_host_alive() RETURNS interval
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT interval '15 minutes'
$$;

CREATE OR REPLACE FUNCTION pggit._schedule_fingerprint(p_definition jsonb) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    -- jsonb's text form is canonical (keys sorted, one spacing), so equal definitions agree
    SELECT encode(sha256(convert_to(p_definition::text, 'UTF8')), 'hex')
$$;

-- A definition as the scheduler sends it: the keys of a schedule in the config, bounded, with
-- a built-in tool and an args object (the backup_* function checks the args themselves).
CREATE OR REPLACE FUNCTION pggit._require_schedule_definition(p_definition jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    c_keys constant text[] := ARRAY['cron', 'timezone', 'tool', 'args', 'catch_up', 'starting_deadline',
                                    'overlap', 'max_age', 'enabled', 'database'];
    v_extra text[];
    v_key   text;
BEGIN
    IF p_definition IS NULL OR jsonb_typeof(p_definition) <> 'object' THEN
        PERFORM pggit._invalid('p_definition', 'must be a JSON object', 'the schedule as the config defines it');
    END IF;
    IF octet_length(p_definition::text) > 16384 THEN
        PERFORM pggit._invalid('p_definition', 'is larger than 16384 bytes', 'a schedule definition');
    END IF;
    SELECT array_agg(k ORDER BY k) INTO v_extra FROM jsonb_object_keys(p_definition) k WHERE k <> ALL (c_keys);
    IF v_extra IS NOT NULL THEN
        PERFORM pggit._invalid('p_definition', format('unknown keys %s', array_to_string(v_extra, ', ')),
            array_to_string(c_keys, ', '));
    END IF;
    PERFORM pggit._require_enum('p_definition.tool', p_definition ->> 'tool',
        ARRAY['pg_dump', 'pg_basebackup', 'pgbackrest', 'barman']);
    IF jsonb_typeof(p_definition -> 'args') IS DISTINCT FROM 'object' THEN
        PERFORM pggit._invalid('p_definition.args', 'must be a JSON object', 'the backup function''s parameters');
    END IF;
    PERFORM pggit._require_enum('p_definition.overlap', coalesce(p_definition ->> 'overlap', 'skip'),
        ARRAY['skip', 'queue']);
    SELECT k INTO v_key FROM unnest(ARRAY['cron', 'timezone', 'database']) k
     WHERE jsonb_typeof(p_definition -> k) IS DISTINCT FROM 'string' AND p_definition ? k ORDER BY k LIMIT 1;
    IF v_key IS NOT NULL THEN
        PERFORM pggit._invalid('p_definition.' || v_key, 'must be a string', 'as the config writes it');
    END IF;
    -- what people read (the cron and zone in `schedules`, a refusal naming an arg) carries no
    -- terminal escape or line break: no C0 or C1 control character in any string, at any depth
    WITH RECURSIVE t(path, value) AS (
        SELECT 'p_definition.' || e.key, e.value FROM jsonb_each(p_definition) e
        UNION ALL
        SELECT t.path || '.' || e.key, e.value FROM t, jsonb_each(t.value) e WHERE jsonb_typeof(t.value) = 'object')
    SELECT t.path INTO v_key FROM t
     WHERE jsonb_typeof(t.value) = 'string' AND pggit._has_control_character(t.value #>> '{}')
     ORDER BY t.path LIMIT 1;
    IF v_key IS NOT NULL THEN
        PERFORM pggit._invalid(v_key, 'contains a control character', 'printable text: no escape, tab or line break');
    END IF;
    RETURN p_definition;
END
$$;

-- The host part of a worker id (worker-01/2 -> worker-01): a host carries one config.
CREATE OR REPLACE FUNCTION pggit._schedule_host(p_worker_id text) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT split_part(pggit._require_worker_id(p_worker_id), '/', 1)
$$;

-- Another live host whose definition of the schedule differs from p_fingerprint.
CREATE OR REPLACE FUNCTION pggit._schedule_conflict(p_schedule text, p_host text, p_fingerprint text,
                                                    OUT host text, OUT fingerprint text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT h.host, h.fingerprint FROM pggit.backup_schedule_hosts h
     WHERE h.schedule_name = p_schedule AND h.host <> p_host AND h.fingerprint <> p_fingerprint
       AND h.seen_at > now() - pggit._schedule_host_alive()
     ORDER BY h.seen_at DESC LIMIT 1
$$;

-- The live host that keeps p_host from recording slots with p_fingerprint: none when that is
-- the established definition (the one that recorded the latest slot); else a live host that
-- still holds the established one, or, when none does, a live host with a third definition
-- (nobody's change can win by itself then). No blocker: p_fingerprint may record, and becomes
-- the established definition with its first slot.
CREATE OR REPLACE FUNCTION pggit._schedule_blocker(p_schedule text, p_host text, p_fingerprint text,
                                                   OUT host text, OUT fingerprint text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT h.host, h.fingerprint
      FROM pggit.backup_schedules s
      JOIN pggit.backup_schedule_hosts h ON h.schedule_name = s.schedule_name
     WHERE s.schedule_name = p_schedule AND s.fingerprint <> p_fingerprint
       AND h.host <> p_host AND h.fingerprint <> p_fingerprint
       AND h.seen_at > now() - pggit._schedule_host_alive()
     ORDER BY (h.fingerprint = s.fingerprint) DESC, h.seen_at DESC
     LIMIT 1
$$;

-- Notes that p_host carries the schedule with this definition, now. A host is spoken for by one
-- login: another login's call for it is refused while the host is alive (seen within
-- _schedule_host_alive), so one compromised host's login cannot replace another host's
-- definition (hiding a conflict) nor record slots in its name; a host silent for longer (moved
-- to a new login) is taken over.
CREATE OR REPLACE FUNCTION pggit._schedule_host_seen(p_schedule text, p_host text, p_fingerprint text,
                                                     p_definition jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_login text;
BEGIN
    INSERT INTO pggit.backup_schedule_hosts AS h (schedule_name, host, fingerprint, definition, seen_at, login)
    VALUES (p_schedule, p_host, p_fingerprint, p_definition, now(), session_user)
    ON CONFLICT (schedule_name, host) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, definition = EXCLUDED.definition, seen_at = EXCLUDED.seen_at,
            login = EXCLUDED.login
        WHERE h.login = EXCLUDED.login OR h.seen_at <= now() - pggit._schedule_host_alive();
    IF NOT FOUND THEN
        SELECT h.login INTO v_login FROM pggit.backup_schedule_hosts h
         WHERE h.schedule_name = p_schedule AND h.host = p_host;
        RAISE EXCEPTION 'pggit: host % of schedule % is carried by login %, not %', p_host, p_schedule, v_login, session_user
            USING ERRCODE = '42501',
                  HINT = 'give each host its own worker id (the part before /); a host moved to a new login takes its name back '
                      || 'once the old one has been silent for ' || pggit._schedule_host_alive();
    END IF;
END
$$;

-- Called by each worker's scheduler before it works out a schedule's slots: registers the
-- schedule (from p_now, the scheduler's clock, never later than the server's), notes this host's
-- definition, and answers where counting resumes, whether another host disagrees (conflict_host)
-- and whether that keeps this host from recording slots (blocked: see _schedule_blocker).
CREATE OR REPLACE FUNCTION pggit.touch_backup_schedule(
    p_worker_id  text,
    p_schedule   text,
    p_definition jsonb,
    p_now        timestamptz DEFAULT NULL
) RETURNS TABLE (registered_at timestamptz, last_slot timestamptz, fingerprint text,
                 conflict_host text, conflict_fingerprint text, blocked boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_host text := pggit._schedule_host(p_worker_id);
    v_fp   text;
BEGIN
    PERFORM pggit._require_name('p_schedule', p_schedule);
    v_fp := pggit._schedule_fingerprint(pggit._require_schedule_definition(p_definition));
    INSERT INTO pggit.backup_schedules AS s (schedule_name, registered_at, fingerprint, definition, defined_by)
    VALUES (p_schedule, least(coalesce(p_now, now()), now()), v_fp, p_definition, v_host)
    ON CONFLICT (schedule_name) DO NOTHING;
    PERFORM pggit._schedule_host_seen(p_schedule, v_host, v_fp, p_definition);
    RETURN QUERY
        SELECT s.registered_at,
               (SELECT max(l.slot_time) FROM pggit.backup_schedule_slots l WHERE l.schedule_name = p_schedule),
               v_fp, c.host, c.fingerprint,
               (SELECT b.host IS NOT NULL FROM pggit._schedule_blocker(p_schedule, v_host, v_fp) b)
          FROM pggit.backup_schedules s
          LEFT JOIN pggit._schedule_conflict(p_schedule, v_host, v_fp) c ON true
         WHERE s.schedule_name = p_schedule;
END
$$;

-- The job a slot enqueues, through the backup_* function of the schedule's tool: args are the
-- function's parameters without p_ (branch for p_branch_name), options its p_options.
CREATE OR REPLACE FUNCTION pggit._enqueue_scheduled(p_tool text, p_args jsonb) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    c_keys constant jsonb := jsonb_build_object(
        'pgbackrest', ARRAY['backup_type', 'branch', 'stanza', 'options'],
        'barman', ARRAY['server_name', 'branch', 'options'],
        'pg_dump', ARRAY['branch', 'schema', 'format', 'output_path', 'options'],
        'pg_basebackup', ARRAY['branch', 'output_path', 'options']);
    v_allowed text[];
    v_key     text;
    v_options jsonb := coalesce(p_args -> 'options', '{}');
BEGIN
    SELECT array_agg(value) INTO v_allowed FROM jsonb_array_elements_text(c_keys -> p_tool);
    FOR v_key IN SELECT k FROM jsonb_object_keys(p_args) k LOOP
        IF v_key <> ALL (v_allowed) THEN
            PERFORM pggit._invalid('args.' || v_key, format('is not a parameter of pggit.backup_%s', p_tool),
                array_to_string(v_allowed, ', '));
        ELSIF v_key <> 'options' AND jsonb_typeof(p_args -> v_key) NOT IN ('string', 'null') THEN
            PERFORM pggit._invalid('args.' || v_key, 'must be a string', array_to_string(v_allowed, ', '));
        END IF;
    END LOOP;
    CASE p_tool
    WHEN 'pgbackrest' THEN
        RETURN pggit.backup_pgbackrest(coalesce(p_args ->> 'backup_type', 'full'), coalesce(p_args ->> 'branch', 'main'),
                                       coalesce(p_args ->> 'stanza', 'main'), v_options);
    WHEN 'barman' THEN
        RETURN pggit.backup_barman(p_args ->> 'server_name', coalesce(p_args ->> 'branch', 'main'), v_options);
    WHEN 'pg_dump' THEN
        RETURN pggit.backup_pg_dump(coalesce(p_args ->> 'branch', 'main'), p_args ->> 'schema',
                                    coalesce(p_args ->> 'format', 'custom'),
                                    coalesce(p_args ->> 'output_path', '/backups'), v_options);
    ELSE
        RETURN pggit.backup_pg_basebackup(coalesce(p_args ->> 'branch', 'main'),
                                          coalesce(p_args ->> 'output_path', '/backups'), v_options);
    END CASE;
END
$$;

-- The pgBackRest stanza and type a definition schedules (NULL for other tools).
CREATE OR REPLACE FUNCTION pggit._schedule_stanza(p_definition jsonb) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT CASE WHEN p_definition ->> 'tool' = 'pgbackrest'
                THEN coalesce(p_definition -> 'args' ->> 'stanza', 'main') END
$$;

-- Records one slot of a schedule, once: the first caller decides, every later caller (another
-- host, a retry after a lost reply) gets that decision back with fresh = false. p_decision is
-- the scheduler's reading of the clock (enqueue, or missed / disabled); overlap and supersession
-- are decided here, under the schedule's row lock. Returns no decision (outcome NULL) while
-- another live host keeps this definition from recording (_schedule_blocker): conflict_host
-- names it.
CREATE OR REPLACE FUNCTION pggit.record_backup_schedule_slot(
    p_worker_id  text,
    p_schedule   text,
    p_slot_time  timestamptz,
    p_definition jsonb,
    p_decision   text,
    p_detail     text DEFAULT NULL
) RETURNS TABLE (outcome text, reason text, backup_id uuid, recorded_by text, detail text, fresh boolean,
                 conflict_host text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_host     text := pggit._schedule_host(p_worker_id);
    v_fp       text;
    v_slot     pggit.backup_schedule_slots;
    v_conflict record;
    v_outcome  text := 'skipped';
    v_reason   text;
    v_backup   uuid;
    v_detail   text := p_detail;
    v_stanza   text;
    v_type     text;
BEGIN
    PERFORM pggit._require_name('p_schedule', p_schedule);
    v_fp := pggit._schedule_fingerprint(pggit._require_schedule_definition(p_definition));
    PERFORM pggit._require_enum('p_decision', p_decision, ARRAY['enqueue', 'missed', 'disabled']);
    IF p_slot_time IS NULL OR p_slot_time <> date_trunc('minute', p_slot_time) OR p_slot_time > now() + interval '5 minutes' THEN
        PERFORM pggit._invalid('p_slot_time', format('%s is not a whole minute up to now', coalesce(p_slot_time::text, 'NULL')),
            'a time the schedule''s cron expression fired (cron has minutes), not in the future');
    END IF;
    PERFORM pggit._require_output_size('p_detail', p_detail);
    IF pggit._has_control_character(p_detail) THEN
        PERFORM pggit._invalid('p_detail', 'contains a control character', 'one printable line: no escape, tab or line break');
    END IF;
    v_detail := left(p_detail, 1000);

    -- one decision per schedule at a time: every later check reads what the earlier one wrote
    PERFORM 1 FROM pggit.backup_schedules s WHERE s.schedule_name = p_schedule FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM pggit._invalid('p_schedule', format('%s is not registered', pggit._show(p_schedule)),
            'call pggit.touch_backup_schedule first');
    END IF;
    SELECT * INTO v_slot FROM pggit.backup_schedule_slots l
     WHERE l.schedule_name = p_schedule AND l.slot_time = p_slot_time;
    IF FOUND THEN
        RETURN QUERY SELECT v_slot.outcome, v_slot.reason, v_slot.backup_id, v_slot.recorded_by, v_slot.detail,
                            false, NULL::text;
        RETURN;
    END IF;
    PERFORM pggit._schedule_host_seen(p_schedule, v_host, v_fp, p_definition);
    SELECT * INTO v_conflict FROM pggit._schedule_blocker(p_schedule, v_host, v_fp);
    IF v_conflict.host IS NOT NULL THEN
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::uuid, NULL::text, NULL::text, false, v_conflict.host;
        RETURN;
    END IF;

    v_stanza := pggit._schedule_stanza(p_definition);
    v_type := coalesce(p_definition -> 'args' ->> 'backup_type', 'full');
    IF p_decision <> 'enqueue' THEN
        v_reason := p_decision;
    ELSIF coalesce(p_definition ->> 'enabled', 'true') = 'false' THEN
        v_reason := 'disabled';
    ELSIF coalesce(p_definition ->> 'overlap', 'skip') = 'skip' AND EXISTS (
            SELECT 1 FROM pggit.backup_schedule_slots l
              JOIN pggit.backup_jobs j ON j.backup_id = l.backup_id AND j.tool <> 'restore_test'
             WHERE l.schedule_name = p_schedule AND l.outcome = 'enqueued'
               AND pggit.backup_job_state(j.status, j.attempts, j.max_attempts) IN ('ready', 'in_progress', 'will_retry')) THEN
        v_reason := 'overlap';
        v_detail := coalesce(v_detail || '; ', '') || 'the previous run of this schedule is still queued or running';
    ELSIF v_stanza IS NOT NULL AND v_type IN ('incr', 'diff') AND EXISTS (
            SELECT 1 FROM pggit.backup_jobs j
             WHERE j.tool = 'pgbackrest' AND j.target = 'pgbackrest:' || v_stanza AND j.status = 'queued'
               AND j.spec -> 'params' ->> 'type' = 'full') THEN
        v_reason := 'superseded';
        v_detail := coalesce(v_detail || '; ', '') || format('a full backup of stanza %s is queued', v_stanza);
    ELSE
        BEGIN
            v_backup := pggit._enqueue_scheduled(p_definition ->> 'tool', p_definition -> 'args');
            v_outcome := 'enqueued';
        EXCEPTION WHEN invalid_parameter_value OR no_data_found OR object_not_in_prerequisite_state
                       OR insufficient_privilege OR check_violation OR not_null_violation OR foreign_key_violation
                       OR raise_exception THEN
            v_reason := 'refused';
            v_detail := left(SQLERRM, 1000);
        END;
    END IF;

    IF v_outcome = 'enqueued' AND v_stanza IS NOT NULL AND v_type = 'full' THEN
        -- an incremental still queued behind this full would be wasted work
        WITH superseded AS (
            UPDATE pggit.backup_jobs j SET status = 'cancelled'
              FROM pggit.backup_schedule_slots l
             WHERE l.backup_id = j.backup_id AND l.outcome = 'enqueued' AND j.status = 'queued'
               AND j.tool = 'pgbackrest' AND j.target = 'pgbackrest:' || v_stanza
               AND j.spec -> 'params' ->> 'type' IN ('incr', 'diff')
            RETURNING j.backup_id)
        UPDATE pggit.backup_schedule_slots l
           SET outcome = 'skipped', reason = 'superseded',
               detail = format('cancelled: superseded by the full backup %s of schedule %s, slot %s',
                               v_backup, p_schedule, p_slot_time)
          FROM superseded s WHERE l.backup_id = s.backup_id;
    END IF;

    INSERT INTO pggit.backup_schedule_slots (schedule_name, slot_time, outcome, reason, backup_id, fingerprint,
                                             recorded_by, detail)
    VALUES (p_schedule, p_slot_time, v_outcome, v_reason, v_backup, v_fp, v_host, v_detail);
    UPDATE pggit.backup_schedules s SET fingerprint = v_fp, definition = p_definition, defined_by = v_host,
                                        updated_at = now()
     WHERE s.schedule_name = p_schedule;
    RETURN QUERY SELECT v_outcome, v_reason, v_backup, v_host, v_detail, true, NULL::text;
END
$$;

-- What `pggit-supervisor schedules` shows, for SQL users: each schedule's latest slot and its
-- outcome, the state of the job it enqueued, and any live host that defines it differently.
-- The next fire time is not here: cron is read by the supervisors, not by SQL.
CREATE OR REPLACE VIEW pggit.backup_schedule_status AS
SELECT s.schedule_name,
       s.definition ->> 'cron' AS cron,
       coalesce(s.definition ->> 'timezone', 'UTC') AS timezone,
       s.definition ->> 'tool' AS tool,
       left(s.fingerprint, 12) AS fingerprint,
       s.defined_by,
       s.registered_at,
       l.slot_time AS last_slot,
       l.outcome AS last_outcome,
       l.reason AS last_reason,
       l.detail AS last_detail,
       l.backup_id AS last_backup_id,
       q.job_state AS last_job_state,
       l.recorded_by AS last_recorded_by,
       c.hosts AS conflicting_hosts
  FROM pggit.backup_schedules s
  LEFT JOIN LATERAL (SELECT * FROM pggit.backup_schedule_slots x WHERE x.schedule_name = s.schedule_name
                      ORDER BY x.slot_time DESC LIMIT 1) l ON true
  LEFT JOIN LATERAL (SELECT j.job_state FROM pggit.backup_job_queue j
                      WHERE j.backup_id = l.backup_id AND j.tool <> 'restore_test'
                      ORDER BY j.created_at DESC LIMIT 1) q ON true
  LEFT JOIN LATERAL (SELECT string_agg(h.host || ' (' || left(h.fingerprint, 12) || ')', ', ' ORDER BY h.host) AS hosts
                       FROM pggit.backup_schedule_hosts h
                      WHERE h.schedule_name = s.schedule_name AND h.fingerprint <> s.fingerprint
                        AND h.seen_at > now() - pggit._schedule_host_alive()) c ON true;

-- Rights: readers (monitoring, operators) see the view and the slots; the definitions (which
-- may hold a webhook URL with a token) stay with the table owner; only workers record.
REVOKE ALL ON pggit.backup_schedules, pggit.backup_schedule_hosts, pggit.backup_schedule_slots,
              pggit.backup_schedule_status FROM PUBLIC;
GRANT SELECT ON pggit.backup_schedule_status, pggit.backup_schedule_slots TO pggit_backup_reader;
REVOKE ALL ON FUNCTION pggit._schedule_host_alive(), pggit._schedule_fingerprint(jsonb),
                       pggit._require_schedule_definition(jsonb), pggit._schedule_host(text),
                       pggit._schedule_conflict(text, text, text), pggit._schedule_blocker(text, text, text),
                       pggit._enqueue_scheduled(text, jsonb),
                       pggit._schedule_host_seen(text, text, text, jsonb),
                       pggit._schedule_stanza(jsonb),
                       pggit.touch_backup_schedule(text, text, jsonb, timestamptz),
                       pggit.record_backup_schedule_slot(text, text, timestamptz, jsonb, text, text)
    FROM PUBLIC;
-- the view's conflict column runs this as its reader
GRANT EXECUTE ON FUNCTION pggit._schedule_host_alive() TO pggit_backup_reader;
GRANT EXECUTE ON FUNCTION pggit.touch_backup_schedule(text, text, jsonb, timestamptz),
                          pggit.record_backup_schedule_slot(text, text, timestamptz, jsonb, text, text)
    TO pggit_backup_worker;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (14, '014_schedules')
    ON CONFLICT (version) DO NOTHING;
