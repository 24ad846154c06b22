-- 008: restore drills. A backup counts only when it is proven readable; a drill proves more:
-- that it restores. schedule_restore_test queues a job that restores a pg_dump backup into a
-- scratch database (row counts compared with those recorded at dump time) or starts a
-- pg_basebackup copy on a free port and queries it, then removes the scratch copy and records
-- the outcome on the backup (restore_tested_at, restore_test_result, metadata.restore_test).

CREATE OR REPLACE FUNCTION pggit.schedule_restore_test(
    p_backup_id UUID,
    p_options   JSONB DEFAULT '{}'
) RETURNS UUID
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_backup  pggit.backups;
    v_options jsonb;
    v_common  jsonb;
    v_job_id  uuid;
BEGIN
    IF p_backup_id IS NULL THEN
        PERFORM pggit._invalid('p_backup_id', 'must not be NULL', 'the id of a completed pg_dump or pg_basebackup backup');
    END IF;
    SELECT * INTO v_backup FROM pggit.backups WHERE backup_id = p_backup_id;
    IF NOT FOUND THEN
        PERFORM pggit._invalid('p_backup_id', format('no backup with id %s', p_backup_id),
            'SELECT backup_id FROM pggit.list_backups(p_status := ''completed'') lists the candidates');
    END IF;
    IF v_backup.status <> 'completed' THEN
        PERFORM pggit._invalid('p_backup_id', format('backup %s is %s, not completed', p_backup_id, v_backup.status),
            'only a completed backup can be restore-tested');
    END IF;
    IF v_backup.backup_tool NOT IN ('pg_dump', 'pg_basebackup') THEN
        PERFORM pggit._invalid('p_backup_id', format('backup %s was made by %s', p_backup_id, v_backup.backup_tool),
            'restore drills cover pg_dump and pg_basebackup backups; for pgBackRest and Barman use '
            || '`pggit-supervisor restore BACKUP_ID --target-dir DIR --execute` (their own restore)');
    END IF;
    v_options := pggit._require_options('p_options', p_options, ARRAY['priority', 'max_attempts', 'timeout_seconds']);
    v_common := pggit._common_options('p_options', v_options);

    INSERT INTO pggit.backup_jobs (backup_id, tool, command, spec, target, priority, max_attempts, metadata)
    VALUES (p_backup_id, 'restore_test',
            pggit._render_command(ARRAY['pggit-supervisor', 'restore-test', p_backup_id::text]),
            pggit._job_spec('restore_test', jsonb_build_object(
                'backup_id', p_backup_id, 'backup_tool', v_backup.backup_tool, 'location', v_backup.location,
                'backup_metadata', v_backup.metadata), v_common),
            'restore_test:' || p_backup_id, (v_common ->> 'priority')::integer,
            (v_common ->> 'max_attempts')::integer, v_options)
    RETURNING job_id INTO v_job_id;
    RETURN v_job_id;
END
$$;

REVOKE ALL ON FUNCTION pggit.schedule_restore_test(uuid, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.schedule_restore_test(uuid, jsonb) TO pggit_backup_operator;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (8, '008_restore_tests')
    ON CONFLICT (version) DO NOTHING;
