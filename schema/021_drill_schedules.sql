-- 021: restore drills on a schedule (issue 11). A drill schedule fires every N seconds (slots
-- aligned to multiples of N since the epoch, so every host computes the same ones); each slot is
-- decided once, here: the target's newest completed, verified, unexpired backup that was never
-- drilled gets a restore drill (pggit.schedule_restore_test), or the slot records why not.

CREATE TABLE IF NOT EXISTS pggit.drill_slots (
    schedule_name  text NOT NULL,
    slot_time      timestamptz NOT NULL,
    target         jsonb NOT NULL,
    outcome        text NOT NULL CHECK (outcome IN ('enqueued', 'skipped')),
    backup_id      uuid,
    job_id         uuid,
    detail         text,
    recorded_by    text NOT NULL,
    recorded_login text NOT NULL DEFAULT session_user,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    -- per target too: a slot decided for one target (two hosts giving one schedule name
    -- different targets, or a host deciding another's slots ahead) is not another target's
    PRIMARY KEY (schedule_name, slot_time, target)
);
REVOKE ALL ON pggit.drill_slots FROM PUBLIC;

-- The slot's decision (made once per target: a later call for the same slot and target returns
-- the first one's).
CREATE OR REPLACE FUNCTION pggit.record_drill_slot(
    p_worker_id text,
    p_schedule  text,
    p_slot      timestamptz,
    p_target    jsonb,
    p_options   jsonb DEFAULT '{}'
) RETURNS TABLE (outcome text, backup_id uuid, job_id uuid, detail text, fresh boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
#variable_conflict use_column
DECLARE
    v_target  jsonb := pggit._require_retention_target(p_target);
    v_backup  uuid;
    v_drilled uuid;
    v_job     uuid;
    v_detail  text;
BEGIN
    PERFORM pggit._require_worker_id(p_worker_id);
    PERFORM pggit._require_name('p_schedule', p_schedule);
    IF v_target ->> 'tool' NOT IN ('pg_dump', 'pg_basebackup') THEN
        PERFORM pggit._invalid('p_target.tool', format('%s backups are not drilled in a sandbox', v_target ->> 'tool'),
            'pg_dump, pg_basebackup');
    END IF;
    IF p_slot IS NULL OR p_slot <> date_trunc('minute', p_slot) OR p_slot > now() + interval '5 minutes' THEN
        PERFORM pggit._invalid('p_slot', format('%s is not a whole minute up to five minutes from now', coalesce(p_slot::text, 'NULL')),
            'the drill slot, a whole minute, not in the future');
    END IF;
    PERFORM pggit._require_options('p_options', coalesce(p_options, '{}'), ARRAY['priority', 'max_attempts', 'timeout_seconds']);

    INSERT INTO pggit.drill_slots (schedule_name, slot_time, target, outcome, recorded_by)
    VALUES (p_schedule, p_slot, v_target, 'skipped', p_worker_id)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT s.outcome, s.backup_id, s.job_id, s.detail, false FROM pggit.drill_slots s
                      WHERE s.schedule_name = p_schedule AND s.slot_time = p_slot AND s.target = v_target;
        RETURN;
    END IF;

    WITH candidates AS (
        SELECT b.backup_id, b.completed_at, b.restore_tested_at
          FROM pggit.backups b
         WHERE b.status = 'completed' AND b.verified_at IS NOT NULL AND b.backup_tool = v_target ->> 'tool'
           AND NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = b.backup_id)
           AND pggit._retention_identity(b.backup_tool, pggit._retention_params(b.backup_id, b.backup_tool)) = v_target
    )
    SELECT (SELECT c.backup_id FROM candidates c WHERE c.restore_tested_at IS NULL
              AND NOT EXISTS (SELECT 1 FROM pggit.backup_jobs j WHERE j.backup_id = c.backup_id AND j.tool = 'restore_test')
            ORDER BY c.completed_at DESC LIMIT 1),
           (SELECT c.backup_id FROM candidates c ORDER BY c.completed_at DESC LIMIT 1)
      INTO v_backup, v_drilled;
    IF v_backup IS NULL THEN
        v_detail := CASE WHEN v_drilled IS NULL THEN 'no completed, verified backup of the target to drill'
                         ELSE 'every verified backup of the target was drilled already (or its drill is queued)' END;
    ELSE
        v_job := pggit.schedule_restore_test(v_backup, coalesce(p_options, '{}'));
    END IF;
    UPDATE pggit.drill_slots s
       SET outcome = CASE WHEN v_job IS NULL THEN 'skipped' ELSE 'enqueued' END,
           backup_id = v_backup, job_id = v_job, detail = v_detail
     WHERE s.schedule_name = p_schedule AND s.slot_time = p_slot AND s.target = v_target;
    RETURN QUERY SELECT CASE WHEN v_job IS NULL THEN 'skipped' ELSE 'enqueued' END, v_backup, v_job, v_detail, true;
END
$$;

-- Per target: the last drill that ran and the last one that passed, with the measured time to
-- restore (the drill's restore_seconds, else its job's run time).
CREATE OR REPLACE VIEW pggit.restore_drill_status AS
SELECT jsonb_strip_nulls(jsonb_build_object('tool', b.backup_tool,
           'database', coalesce(f.params ->> 'database', current_database()),
           'schema', CASE WHEN b.backup_tool = 'pg_dump' THEN f.params ->> 'schema' END)) AS target,
       b.backup_id, b.backup_name, b.completed_at AS backup_completed_at, b.restore_tested_at, b.restore_test_result,
       coalesce((b.metadata -> 'restore_test' ->> 'restore_seconds')::numeric,
                (SELECT extract(epoch FROM j.completed_at - j.started_at) FROM pggit.backup_jobs j
                  WHERE j.backup_id = b.backup_id AND j.tool = 'restore_test' AND j.status = 'completed'
                  ORDER BY j.completed_at DESC LIMIT 1)) AS restore_seconds,
       b.metadata -> 'restore_test' ->> 'error' AS error
  FROM pggit.backups b
  -- the target as 015 places the backup: by its first job of its own tool (drills cover pg_dump
  -- and pg_basebackup only, whose targets are this database and, for a dump, its schema)
  LEFT JOIN LATERAL (SELECT j.spec -> 'params' AS params FROM pggit.backup_jobs j
                      WHERE j.backup_id = b.backup_id AND j.tool = b.backup_tool
                      ORDER BY j.created_at, j.job_id LIMIT 1) f ON true
 WHERE b.restore_tested_at IS NOT NULL AND b.backup_tool IN ('pg_dump', 'pg_basebackup');

REVOKE ALL ON FUNCTION pggit.record_drill_slot(text, text, timestamptz, jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.record_drill_slot(text, text, timestamptz, jsonb, jsonb) TO pggit_backup_worker;
REVOKE ALL ON pggit.restore_drill_status FROM PUBLIC;
GRANT SELECT ON pggit.restore_drill_status, pggit.drill_slots TO pggit_backup_reader;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (21, '021_drill_schedules')
    ON CONFLICT (version) DO NOTHING;
