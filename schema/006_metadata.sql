-- 006: backup metadata: registering a backup by hand (custom workflows), completing or failing
-- it, and reading the history.

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
        PERFORM pggit._invalid('p_commit_hash', 'p_commit_hash and p_branch_name are both NULL',
            'link the backup to a commit: give p_commit_hash, or p_branch_name to use its head commit');
    END IF;
    IF v_commit IS NOT NULL THEN
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

CREATE OR REPLACE FUNCTION pggit.complete_backup(
    p_backup_id        UUID,
    p_backup_size      BIGINT DEFAULT NULL,
    p_compressed_size  BIGINT DEFAULT NULL,
    p_compression_type TEXT   DEFAULT NULL
) RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
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
    UPDATE pggit.backups b
       SET status = 'completed', completed_at = now(), error_message = NULL,
           backup_size = coalesce(p_backup_size, b.backup_size),
           compressed_size = coalesce(p_compressed_size, b.compressed_size),
           compression_type = coalesce(p_compression_type, b.compression_type)
     WHERE b.backup_id = p_backup_id AND b.status = 'in_progress';
    RETURN FOUND;
END
$$;

-- Never flips a completed backup: only one still in progress can fail.
CREATE OR REPLACE FUNCTION pggit.fail_backup(
    p_backup_id     UUID,
    p_error_message TEXT
) RETURNS BOOLEAN
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF p_error_message IS NULL OR btrim(p_error_message) = '' THEN
        PERFORM pggit._invalid('p_error_message', 'must not be empty', 'what went wrong, for the operator');
    END IF;
    UPDATE pggit.backups b
       SET status = 'failed', completed_at = now(), error_message = left(p_error_message, 8192)
     WHERE b.backup_id = p_backup_id AND b.status = 'in_progress';
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION pggit.list_backups(
    p_branch_name TEXT    DEFAULT NULL,
    p_commit_hash TEXT    DEFAULT NULL,
    p_status      TEXT    DEFAULT NULL,
    p_limit       INTEGER DEFAULT 100,
    p_offset      INTEGER DEFAULT 0
) RETURNS TABLE (
    backup_id        uuid,
    backup_name      text,
    backup_type      text,
    backup_tool      text,
    status           text,
    branch_name      text,
    commit_hash      text,
    location         text,
    backup_size      bigint,
    compressed_size  bigint,
    compression_type text,
    checksum         text,
    error_message    text,
    created_at       timestamptz,
    completed_at     timestamptz
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF p_branch_name IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pggit.branches WHERE name = p_branch_name) THEN
        PERFORM pggit._invalid('p_branch_name', format('no branch named %s', pggit._show(p_branch_name)),
            'the name of an existing branch, or NULL for every branch');
    END IF;
    IF p_commit_hash IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pggit.commits WHERE hash = p_commit_hash) THEN
        PERFORM pggit._invalid('p_commit_hash', format('no commit %s', pggit._show(p_commit_hash)),
            'the hash of an existing commit, or NULL for every commit');
    END IF;
    IF p_status IS NOT NULL THEN
        PERFORM pggit._require_enum('p_status', p_status, ARRAY['in_progress', 'completed', 'failed', 'cancelled']);
    END IF;
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 10000 THEN
        PERFORM pggit._invalid('p_limit', format('%s is out of range', coalesce(p_limit::text, 'NULL')), 'from 1 to 10000');
    END IF;
    IF p_offset IS NULL OR p_offset < 0 THEN
        PERFORM pggit._invalid('p_offset', format('%s is out of range', coalesce(p_offset::text, 'NULL')), '0 or more');
    END IF;
    RETURN QUERY
        SELECT b.backup_id, b.backup_name, b.backup_type, b.backup_tool, b.status, b.branch_name,
               b.commit_hash, b.location, b.backup_size, b.compressed_size, b.compression_type,
               b.checksum, b.error_message, b.created_at, b.completed_at
          FROM pggit.backups b
         WHERE (p_branch_name IS NULL OR b.branch_name = p_branch_name)
           AND (p_commit_hash IS NULL OR b.commit_hash = p_commit_hash)
           AND (p_status IS NULL OR b.status = p_status)
         ORDER BY b.created_at DESC, b.backup_id
         LIMIT p_limit OFFSET p_offset;
END
$$;

CREATE OR REPLACE FUNCTION pggit.get_backup_info(p_backup_id UUID)
RETURNS TABLE (
    backup_id        uuid,
    backup_name      text,
    backup_type      text,
    backup_tool      text,
    status           text,
    branch_name      text,
    commit_hash      text,
    location         text,
    backup_size      bigint,
    compressed_size  bigint,
    compression_type text,
    checksum         text,
    error_message    text,
    metadata         jsonb,
    created_at       timestamptz,
    started_at       timestamptz,
    completed_at     timestamptz,
    jobs             jsonb
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pggit.backups b WHERE b.backup_id = p_backup_id) THEN
        RAISE EXCEPTION 'pggit: no backup with id %', coalesce(p_backup_id::text, 'NULL')
            USING ERRCODE = 'P0002', HINT = 'SELECT backup_id FROM pggit.list_backups() lists the known backups';
    END IF;
    RETURN QUERY
        SELECT b.backup_id, b.backup_name, b.backup_type, b.backup_tool, b.status, b.branch_name,
               b.commit_hash, b.location, b.backup_size, b.compressed_size, b.compression_type,
               b.checksum, b.error_message, b.metadata, b.created_at, b.started_at, b.completed_at,
               coalesce((SELECT jsonb_agg(jsonb_build_object(
                            'job_id', q.job_id, 'tool', q.tool, 'status', q.status, 'job_state', q.job_state,
                            'attempts', q.attempts, 'max_attempts', q.max_attempts, 'worker_id', q.worker_id,
                            'command', q.command, 'last_error', q.last_error, 'next_retry_at', q.next_retry_at,
                            'started_at', q.started_at, 'completed_at', q.completed_at) ORDER BY q.created_at)
                           FROM pggit.backup_job_queue q WHERE q.backup_id = b.backup_id), '[]'::jsonb)
          FROM pggit.backups b
         WHERE b.backup_id = p_backup_id;
END
$$;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (6, '006_metadata')
    ON CONFLICT (version) DO NOTHING;
