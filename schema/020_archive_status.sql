-- 020: WAL archiving freshness per pgBackRest stanza and Barman server (issue 11). A backup
-- without the WAL to recover it is not a backup, so the workers read each repository's archive
-- state from the tool itself (pgbackrest info, barman status) and, where the queue database is
-- the archived server, its current WAL segment and pg_stat_archiver; the readings are recorded
-- here, one row per target, and the database decides how stale the archive is:
--   behind_since  when a completed WAL segment of the server was first seen missing from the
--                 archive (NULL while the archive keeps up). An idle server that writes no WAL
--                 is not behind: it has nothing to archive.
--   changed_at    when the archive's newest segment last changed (what is left when the
--                 server's position is not known: the archive is at least this stale).
-- One worker checks a target per interval, whichever host: claim_archive_check is the guard.

CREATE TABLE IF NOT EXISTS pggit.archive_status (
    target_key      text PRIMARY KEY,
    target          jsonb NOT NULL,
    next_check_at   timestamptz NOT NULL DEFAULT now(),
    checked_at      timestamptz,
    checked_by      text,
    -- the newest segment in the archive (the oldest of the repositories' newest, for several)
    archive_max     text CHECK (archive_max ~ '^[0-9A-F]{24}$'),
    changed_at      timestamptz,
    -- the server's segment being written now, when the queue database is the archived server
    server_segment  text CHECK (server_segment ~ '^[0-9A-F]{24}$'),
    behind_since    timestamptz,
    -- when a reading last compared the archive with the server's position: while the archive is
    -- not behind, how long ago it was last known to keep up (readings that stop or fail age it)
    compared_at     timestamptz,
    failed_count    bigint,
    last_failed_wal text,
    last_failed_at  timestamptz,
    -- what the tool says (barman check's summary, pgbackrest's stanza status), and a reading that failed
    detail          text,
    error           text
);
REVOKE ALL ON pggit.archive_status FROM PUBLIC;

-- The segment name's position, comparable across timelines: log and segment numbers only (the
-- first 8 hex digits are the timeline; a new timeline starts where the old one ended).
CREATE OR REPLACE FUNCTION pggit._wal_position(p_segment text) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT ('x' || substr(p_segment, 9, 8))::bit(32)::bigint::numeric * 4294967296
         + ('x' || substr(p_segment, 17, 8))::bit(32)::bigint::numeric
$$;

-- True when this worker should check the target now: its row's next check is due (or it has
-- none); the next one is then p_interval_seconds away, for every host.
CREATE OR REPLACE FUNCTION pggit.claim_archive_check(p_worker_id text, p_target jsonb, p_interval_seconds integer)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_target jsonb := pggit._require_retention_target(p_target);
BEGIN
    PERFORM pggit._require_worker_id(p_worker_id);
    IF v_target ->> 'tool' NOT IN ('pgbackrest', 'barman') THEN
        PERFORM pggit._invalid('p_target.tool', format('%s has no WAL archive', v_target ->> 'tool'), 'pgbackrest, barman');
    END IF;
    IF p_interval_seconds IS NULL OR p_interval_seconds NOT BETWEEN 10 AND 86400 THEN
        PERFORM pggit._invalid('p_interval_seconds', format('%s is out of range', coalesce(p_interval_seconds::text, 'NULL')),
            '10 to 86400 seconds');
    END IF;
    INSERT INTO pggit.archive_status AS a (target_key, target, next_check_at)
    VALUES (v_target::text, v_target, now() + make_interval(secs => p_interval_seconds))
    ON CONFLICT (target_key) DO UPDATE SET next_check_at = EXCLUDED.next_check_at
     WHERE a.next_check_at <= now();
    RETURN FOUND;
END
$$;

-- One reading of a target's archive (p_reading: archive_max, server_segment, failed_count,
-- last_failed_wal, last_failed_at, detail, error; each optional). The database keeps when the
-- archive's newest segment changed and since when it has been behind the server.
CREATE OR REPLACE FUNCTION pggit.record_archive_status(p_worker_id text, p_target jsonb, p_reading jsonb)
RETURNS pggit.archive_status
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pggit, pg_temp SET pggit.queue_internal = 'off' AS $$
DECLARE
    v_target  jsonb := pggit._require_retention_target(p_target);
    v_reading jsonb;
    v_max     text;
    v_server  text;
    v_row     pggit.archive_status;
BEGIN
    PERFORM pggit._require_worker_id(p_worker_id);
    IF p_reading IS NULL OR jsonb_typeof(p_reading) <> 'object' OR octet_length(p_reading::text) > 16384 THEN
        PERFORM pggit._invalid('p_reading', 'must be a JSON object of at most 16 KiB',
            'archive_max, server_segment, failed_count, last_failed_wal, last_failed_at, detail, error');
    END IF;
    v_reading := pggit._require_options('p_reading', p_reading, ARRAY['archive_max', 'server_segment', 'failed_count',
        'last_failed_wal', 'last_failed_at', 'detail', 'error']);
    v_max := v_reading ->> 'archive_max';
    v_server := v_reading ->> 'server_segment';
    IF v_max !~ '^[0-9A-F]{24}$' THEN
        PERFORM pggit._invalid('p_reading.archive_max', format('%s is not a WAL segment name', pggit._show(v_max)), '24 hex digits');
    END IF;
    IF v_server !~ '^[0-9A-F]{24}$' THEN
        PERFORM pggit._invalid('p_reading.server_segment', format('%s is not a WAL segment name', pggit._show(v_server)), '24 hex digits');
    END IF;
    IF jsonb_typeof(v_reading -> 'failed_count') <> 'null' AND (jsonb_typeof(v_reading -> 'failed_count') <> 'number'
                                                                OR (v_reading ->> 'failed_count')::numeric < 0) THEN
        PERFORM pggit._invalid('p_reading.failed_count', format('%s is not a count', v_reading -> 'failed_count'),
            'pg_stat_archiver''s failed_count: a whole number from 0');
    END IF;
    INSERT INTO pggit.archive_status (target_key, target) VALUES (v_target::text, v_target) ON CONFLICT DO NOTHING;
    SELECT * INTO v_row FROM pggit.archive_status a WHERE a.target_key = v_target::text FOR UPDATE;
    UPDATE pggit.archive_status a
       SET checked_at = now(), checked_by = p_worker_id,
           error = left(v_reading ->> 'error', 2000),
           detail = left(v_reading ->> 'detail', 2000),
           -- a failed reading changes nothing it did not read
           archive_max = coalesce(v_max, a.archive_max),
           changed_at = CASE WHEN v_max IS NULL THEN a.changed_at
                             WHEN a.archive_max IS DISTINCT FROM v_max THEN now() ELSE a.changed_at END,
           server_segment = CASE WHEN v_reading ? 'error' AND v_server IS NULL THEN a.server_segment ELSE v_server END,
           -- behind: a segment before the one being written is not in the archive
           behind_since = CASE
               WHEN coalesce(v_max, a.archive_max) IS NULL OR v_server IS NULL THEN
                   CASE WHEN v_reading ? 'error' THEN a.behind_since END
               WHEN pggit._wal_position(coalesce(v_max, a.archive_max)) + 1 >= pggit._wal_position(v_server) THEN NULL
               ELSE coalesce(a.behind_since, now()) END,
           compared_at = CASE WHEN coalesce(v_max, a.archive_max) IS NOT NULL AND v_server IS NOT NULL THEN now()
                              ELSE a.compared_at END,
           failed_count = coalesce((v_reading ->> 'failed_count')::bigint, a.failed_count),
           last_failed_wal = coalesce(left(v_reading ->> 'last_failed_wal', 100), a.last_failed_wal),
           last_failed_at = coalesce((v_reading ->> 'last_failed_at')::timestamptz, a.last_failed_at)
     WHERE a.target_key = v_target::text
    RETURNING * INTO v_row;
    RETURN v_row;
EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range OR invalid_datetime_format THEN
    PERFORM pggit._invalid('p_reading', 'failed_count must be a number and last_failed_at a time', SQLERRM);
END
$$;

-- For people and monitoring: how stale each archive is. wal_age_seconds: how long a completed
-- segment has waited when the server's position is known (while the archive keeps up: since the
-- reading that last found it so, so readings that stop or fail age it and never read as 0),
-- else how long the archive's newest segment has not changed; NULL before a first reading.
CREATE OR REPLACE VIEW pggit.archive_freshness AS
SELECT a.target, a.target ->> 'tool' AS tool, coalesce(a.target ->> 'stanza', a.target ->> 'server') AS name,
       a.checked_at, a.checked_by, a.archive_max, a.changed_at, a.server_segment, a.behind_since,
       CASE WHEN a.archive_max IS NULL THEN NULL
            WHEN a.server_segment IS NOT NULL THEN
                extract(epoch FROM now() - coalesce(a.behind_since, a.compared_at, a.changed_at))
            ELSE extract(epoch FROM now() - a.changed_at) END AS wal_age_seconds,
       a.server_segment IS NOT NULL AS server_position_known,
       a.failed_count, a.last_failed_wal, a.last_failed_at, a.detail, a.error, a.compared_at
  FROM pggit.archive_status a;

REVOKE ALL ON FUNCTION pggit._wal_position(text), pggit.claim_archive_check(text, jsonb, integer),
                       pggit.record_archive_status(text, jsonb, jsonb)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pggit.claim_archive_check(text, jsonb, integer),
                          pggit.record_archive_status(text, jsonb, jsonb)
    TO pggit_backup_worker;
REVOKE ALL ON pggit.archive_freshness FROM PUBLIC;
GRANT SELECT ON pggit.archive_freshness TO pggit_backup_reader;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (20, '020_archive_status')
    ON CONFLICT (version) DO NOTHING;
