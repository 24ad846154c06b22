-- 022: what monitoring reads per target (issue 11): each backup's target as retention places it
-- (from its first job of its own tool, never from metadata a worker merged: 015), and per target
-- and backup type the last success and failure, the newest one's duration and size, and how many
-- verified backups are available. Views over the rows, for readers; no timestamp is ever made up
-- (a target that never had a success has NULL, never 0).

CREATE OR REPLACE VIEW pggit.backup_target_of AS
SELECT b.backup_id,
       CASE b.backup_tool
           WHEN 'pgbackrest' THEN jsonb_build_object('tool', 'pgbackrest', 'stanza', f.params ->> 'stanza')
           WHEN 'barman' THEN jsonb_build_object('tool', 'barman', 'server', f.params ->> 'server')
           WHEN 'pg_dump' THEN jsonb_strip_nulls(jsonb_build_object('tool', 'pg_dump',
               'database', coalesce(f.params ->> 'database', current_database()), 'schema', f.params ->> 'schema'))
           WHEN 'pg_basebackup' THEN jsonb_build_object('tool', 'pg_basebackup', 'database', current_database())
       END AS target
  FROM pggit.backups b
  JOIN LATERAL (SELECT j.spec -> 'params' AS params FROM pggit.backup_jobs j
                 WHERE j.backup_id = b.backup_id AND j.tool = b.backup_tool
                 ORDER BY j.created_at, j.job_id LIMIT 1) f ON true
 WHERE b.backup_tool IN ('pgbackrest', 'barman', 'pg_dump', 'pg_basebackup');

CREATE OR REPLACE VIEW pggit.backup_target_summary AS
WITH placed AS (
    SELECT t.target, b.backup_type, b.status, b.completed_at, b.started_at, b.backup_size, b.metadata,
           b.status = 'completed' AND b.verified_at IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM pggit.backup_expirations e WHERE e.backup_id = b.backup_id) AS available
      FROM pggit.backup_target_of t JOIN pggit.backups b ON b.backup_id = t.backup_id
)
SELECT p.target, p.target ->> 'tool' AS tool, p.backup_type,
       max(p.completed_at) FILTER (WHERE p.status = 'completed') AS last_success_at,
       max(p.completed_at) FILTER (WHERE p.status = 'failed') AS last_failure_at,
       max(p.completed_at) FILTER (WHERE p.available) AS newest_verified_at,
       count(*) FILTER (WHERE p.available) AS verified_available,
       count(*) FILTER (WHERE p.status = 'completed') AS completed,
       count(*) FILTER (WHERE p.status = 'failed') AS failed,
       count(*) FILTER (WHERE p.status = 'cancelled') AS cancelled,
       (array_agg(extract(epoch FROM p.completed_at - p.started_at) ORDER BY p.completed_at DESC)
            FILTER (WHERE p.status = 'completed' AND p.started_at IS NOT NULL))[1] AS last_duration_seconds,
       (array_agg(p.backup_size ORDER BY p.completed_at DESC) FILTER (WHERE p.status = 'completed'))[1] AS last_size_bytes,
       (array_agg(p.metadata ->> 'repo' ORDER BY p.completed_at DESC) FILTER (WHERE p.status = 'completed'))[1] AS repo_key
  FROM placed p
 GROUP BY p.target, p.backup_type;

REVOKE ALL ON pggit.backup_target_of, pggit.backup_target_summary FROM PUBLIC;
GRANT SELECT ON pggit.backup_target_of, pggit.backup_target_summary TO pggit_backup_reader;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (22, '022_target_summary')
    ON CONFLICT (version) DO NOTHING;
