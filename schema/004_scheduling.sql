-- 004: scheduling. Every backup_* function validates all of its input, then writes one backup
-- row and one job in one statement pair; nothing is written when validation fails. A job
-- carries a structured spec (tool + validated parameters). Workers build argv from the spec and
-- their own config; the `command` column is only a rendering for people.

-- Options as stored for people to read: a webhook URL may carry a secret token (Slack's do), so
-- it is kept only in the job's spec, which readers cannot select.
CREATE OR REPLACE FUNCTION pggit._visible_options(p_options jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT CASE WHEN p_options ? 'webhook_url' THEN jsonb_set(p_options, '{webhook_url}', '"(set)"')
                ELSE p_options END
$$;

-- The spec a worker runs: {"tool", "params", "timeout_seconds", "notify": {...}}.
CREATE OR REPLACE FUNCTION pggit._job_spec(p_tool text, p_params jsonb, p_common jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'tool', p_tool, 'params', p_params, 'timeout_seconds', p_common -> 'timeout_seconds',
        'notify', jsonb_build_object('webhook_url', p_common -> 'webhook_url',
                                     'on_success', p_common -> 'notify_on_success',
                                     'on_failure', p_common -> 'notify_on_failure')))
$$;

CREATE OR REPLACE FUNCTION pggit._schedule_backup(
    p_tool        text,
    p_backup_type text,
    p_branch_name text,
    p_commit_hash text,
    p_params      jsonb,
    p_common      jsonb,
    p_target      text,
    p_argv        text[],
    p_location    text,
    p_options     jsonb
) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_backup_id uuid;
BEGIN
    INSERT INTO pggit.backups (backup_name, backup_type, backup_tool, location, commit_hash, branch_name, metadata)
    VALUES (format('%s-%s-%s-%s', p_tool, p_branch_name, left(p_commit_hash, 8),
                   to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD"T"HH24MISS"Z"')),
            p_backup_type, p_tool, p_location, p_commit_hash, p_branch_name,
            jsonb_build_object('options', pggit._visible_options(p_options), 'params', p_params))
    RETURNING backup_id INTO v_backup_id;

    INSERT INTO pggit.backup_jobs (backup_id, tool, command, spec, target, priority, max_attempts, metadata)
    VALUES (v_backup_id, p_tool, pggit._render_command(p_argv),
            pggit._job_spec(p_tool, p_params, p_common), p_target, (p_common ->> 'priority')::integer, (p_common ->> 'max_attempts')::integer,
            pggit._visible_options(p_options));
    RETURN v_backup_id;
END
$$;

CREATE OR REPLACE FUNCTION pggit.backup_pgbackrest(
    p_backup_type TEXT DEFAULT 'full',
    p_branch_name TEXT DEFAULT 'main',
    p_stanza      TEXT DEFAULT 'main',
    p_options     JSONB DEFAULT '{}'
) RETURNS UUID
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    c_types constant text[] := ARRAY['full', 'incr', 'diff'];
    v_options jsonb;
    v_common  jsonb;
    v_head    text;
    v_repo    bigint;
    v_params  jsonb;
    v_argv    text[];
BEGIN
    PERFORM pggit._require_enum('p_backup_type', p_backup_type, c_types);
    v_head := pggit._require_branch_head('p_branch_name', p_branch_name);
    PERFORM pggit._require_name('p_stanza', p_stanza);
    v_options := pggit._require_options('p_options', p_options, ARRAY[
        'repo', 'type', 'priority', 'max_attempts', 'timeout_seconds',
        'webhook_url', 'notify_on_success', 'notify_on_failure']);
    v_common := pggit._common_options('p_options', v_options);
    v_repo := pggit._opt_int('p_options', v_options, 'repo', 1, 256);
    IF pggit._opt_enum('p_options', v_options, 'type', c_types, p_backup_type) <> p_backup_type THEN
        PERFORM pggit._invalid('p_options.type',
            format('%s disagrees with p_backup_type %s', pggit._show(v_options ->> 'type'), pggit._show(p_backup_type)),
            'leave "type" out, or give the same value as p_backup_type (full, incr or diff)');
    END IF;

    v_params := jsonb_strip_nulls(jsonb_build_object('stanza', p_stanza, 'type', p_backup_type, 'repo', v_repo));
    v_argv := ARRAY['pgbackrest', '--stanza=' || p_stanza, '--type=' || p_backup_type]
              || CASE WHEN v_repo IS NULL THEN ARRAY[]::text[] ELSE ARRAY['--repo=' || v_repo] END
              || ARRAY['--start-fast', 'backup'];
    RETURN pggit._schedule_backup('pgbackrest',
        CASE p_backup_type WHEN 'full' THEN 'full' WHEN 'incr' THEN 'incremental' ELSE 'differential' END,
        p_branch_name, v_head, v_params, v_common, 'pgbackrest:' || p_stanza, v_argv,
        'pgbackrest://' || p_stanza, v_options);
END
$$;

CREATE OR REPLACE FUNCTION pggit.backup_barman(
    p_server_name TEXT,
    p_branch_name TEXT DEFAULT 'main',
    p_options     JSONB DEFAULT '{}'
) RETURNS UUID
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_options jsonb;
    v_common  jsonb;
    v_head    text;
    v_wait    boolean;
    v_reuse   text;
    v_params  jsonb;
    v_argv    text[];
BEGIN
    PERFORM pggit._require_name('p_server_name', p_server_name);
    IF lower(p_server_name) IN ('all', 'barman') THEN
        -- `barman backup all` would back up every server Barman knows
        PERFORM pggit._invalid('p_server_name', format('%s is reserved by Barman', pggit._show(p_server_name)),
            'the name of one server section from the Barman configuration (not "all")');
    END IF;
    v_head := pggit._require_branch_head('p_branch_name', p_branch_name);
    v_options := pggit._require_options('p_options', p_options, ARRAY[
        'wait', 'reuse-backup', 'priority', 'max_attempts', 'timeout_seconds',
        'webhook_url', 'notify_on_success', 'notify_on_failure']);
    v_common := pggit._common_options('p_options', v_options);
    -- Waiting is the default: only a backup whose WAL has arrived can be verified.
    v_wait := pggit._opt_bool('p_options', v_options, 'wait', true);
    v_reuse := pggit._opt_enum('p_options', v_options, 'reuse-backup', ARRAY['off', 'copy', 'link', 'incremental'], NULL);
    IF v_reuse = 'incremental' THEN
        RAISE NOTICE 'pggit: reuse-backup "incremental" is Barman''s "link" mode; scheduled with --reuse-backup=link';
        v_reuse := 'link';
    END IF;

    v_params := jsonb_strip_nulls(jsonb_build_object('server', p_server_name, 'wait', v_wait, 'reuse_backup', v_reuse));
    v_argv := ARRAY['barman', 'backup']
              || CASE WHEN v_wait THEN ARRAY['--wait'] ELSE ARRAY[]::text[] END
              || CASE WHEN v_reuse IS NULL THEN ARRAY[]::text[] ELSE ARRAY['--reuse-backup=' || v_reuse] END
              || ARRAY[p_server_name];
    RETURN pggit._schedule_backup('barman', 'full', p_branch_name, v_head, v_params, v_common,
        'barman:' || p_server_name, v_argv, 'barman://' || p_server_name, v_options);
END
$$;

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
    RETURN pggit._schedule_backup('pg_dump', 'full', p_branch_name, v_head, v_params, v_common,
        'pg_dump:' || current_database() || ':' || coalesce(p_schema, '*'), v_argv,
        'file://' || v_dir || '/', v_options);
END
$$;

-- The guide names pg_basebackup as a supported tool but gives it no function.
CREATE OR REPLACE FUNCTION pggit.backup_pg_basebackup(
    p_branch_name TEXT DEFAULT 'main',
    p_output_path TEXT DEFAULT '/backups',
    p_options     JSONB DEFAULT '{}'
) RETURNS UUID
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_options     jsonb;
    v_common      jsonb;
    v_head        text;
    v_dir         text;
    v_format      text;
    v_compression text;
    v_level       bigint;
    v_checkpoint  text;
    v_params      jsonb;
    v_argv        text[];
BEGIN
    v_head := pggit._require_branch_head('p_branch_name', p_branch_name);
    v_dir := pggit._require_dir('p_output_path', p_output_path);
    v_options := pggit._require_options('p_options', p_options, ARRAY[
        'format', 'compression', 'compression_level', 'checkpoint', 'priority', 'max_attempts',
        'timeout_seconds', 'webhook_url', 'notify_on_success', 'notify_on_failure']);
    v_common := pggit._common_options('p_options', v_options);
    v_format := pggit._opt_enum('p_options', v_options, 'format', ARRAY['plain', 'tar'], 'plain');
    v_compression := pggit._opt_enum('p_options', v_options, 'compression', ARRAY['none', 'gzip', 'lz4', 'zstd'], 'none');
    IF v_compression <> 'none' AND v_format <> 'tar' THEN
        PERFORM pggit._invalid('p_options.compression', 'pg_basebackup compresses only the tar format',
            'add "format": "tar", or leave compression out');
    END IF;
    v_level := pggit._opt_int('p_options', v_options, 'compression_level', 1,
                              CASE v_compression WHEN 'gzip' THEN 9 WHEN 'lz4' THEN 12 ELSE 22 END);
    IF v_level IS NOT NULL AND v_compression = 'none' THEN
        PERFORM pggit._invalid('p_options.compression_level', 'needs a compression method',
            'add "compression": "gzip", "lz4" or "zstd" (with "format": "tar")');
    END IF;
    v_checkpoint := pggit._opt_enum('p_options', v_options, 'checkpoint', ARRAY['fast', 'spread'], 'fast');

    v_params := jsonb_strip_nulls(jsonb_build_object(
        'output_dir', v_dir, 'format', v_format, 'compression', v_compression,
        'compression_level', v_level, 'checkpoint', v_checkpoint));
    v_argv := ARRAY['pg_basebackup', '--pgdata=' || v_dir || '/{name}', '--format=' || v_format,
                    '--wal-method=stream', '--checkpoint=' || v_checkpoint, '--manifest-checksums=SHA256']
              || CASE WHEN v_compression = 'none' THEN ARRAY[]::text[]
                      ELSE ARRAY['--compress=' || v_compression || coalesce(':' || v_level, '')] END;
    RETURN pggit._schedule_backup('pg_basebackup', 'full', p_branch_name, v_head, v_params, v_common,
        'pg_basebackup:' || current_database(), v_argv, 'file://' || v_dir || '/', v_options);
END
$$;

-- The guide's way to queue a custom command. The worker runs it only when its executable is on
-- the config's allowlist, as an argv split with shlex, never through a shell: so a command
-- that needs a shell to mean what it says is refused here, before it is queued.
CREATE OR REPLACE FUNCTION pggit.enqueue_backup_job(
    p_backup_id    UUID,
    p_command      TEXT,
    p_tool         TEXT,
    p_max_attempts INTEGER DEFAULT 3,
    p_metadata     JSONB DEFAULT '{}'
) RETURNS UUID
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_status   text;
    v_metadata jsonb;
    v_common   jsonb;
    v_job_id   uuid;
BEGIN
    IF p_backup_id IS NULL THEN
        PERFORM pggit._invalid('p_backup_id', 'must not be NULL', 'the id returned by pggit.register_backup(...)');
    END IF;
    SELECT status INTO v_status FROM pggit.backups WHERE backup_id = p_backup_id;
    IF NOT FOUND THEN
        PERFORM pggit._invalid('p_backup_id', format('no backup with id %s', p_backup_id),
            'the id returned by pggit.register_backup(...)');
    ELSIF v_status <> 'in_progress' THEN
        PERFORM pggit._invalid('p_backup_id', format('backup %s is already %s', p_backup_id, v_status),
            'register a new backup for a new run');
    ELSIF EXISTS (SELECT 1 FROM pggit.backup_jobs j WHERE j.backup_id = p_backup_id AND j.tool <> 'restore_test') THEN
        -- one job per backup: two would race to decide its outcome
        PERFORM pggit._invalid('p_backup_id', format('backup %s already has a job', p_backup_id),
            'register a new backup for another command');
    END IF;
    PERFORM pggit._require_text('p_command', p_command, '^[^[:cntrl:];|&$`<>\\*?(){}]+$', 4096,
        'one executable and its arguments, as on a command line, without a shell: no ; | & $ ` < > \ * ? ( ) { } or '
        || 'line breaks (the executable must be on tools.custom.allowed_commands in the supervisor config)');
    IF btrim(p_command) = '' THEN
        PERFORM pggit._invalid('p_command', 'is empty', 'one executable and its arguments');
    END IF;
    PERFORM pggit._require_enum('p_tool', p_tool, ARRAY['custom']);
    IF p_max_attempts IS NULL OR p_max_attempts < 1 OR p_max_attempts > 100 THEN
        PERFORM pggit._invalid('p_max_attempts', format('%s is out of range', coalesce(p_max_attempts::text, 'NULL')),
            'an integer from 1 to 100');
    END IF;
    v_metadata := coalesce(p_metadata, '{}'::jsonb);
    IF jsonb_typeof(v_metadata) <> 'object' OR length(v_metadata::text) > 65536 THEN
        PERFORM pggit._invalid('p_metadata', 'must be a JSON object of at most 64 kB', 'e.g. {"script": "nightly"}');
    END IF;
    -- Free-form metadata, but the keys the built-in tools take mean the same here.
    v_common := pggit._common_options('p_metadata', v_metadata - 'max_attempts');

    INSERT INTO pggit.backup_jobs (backup_id, tool, command, spec, target, priority, max_attempts, metadata)
    VALUES (p_backup_id, 'custom', p_command,
            pggit._job_spec('custom', jsonb_build_object('command', p_command), v_common), NULL, (v_common ->> 'priority')::integer, p_max_attempts,
            pggit._visible_options(v_metadata))
    RETURNING job_id INTO v_job_id;
    RETURN v_job_id;
END
$$;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (4, '004_scheduling')
    ON CONFLICT (version) DO NOTHING;
