-- pggit-supervisor schema bootstrap: the schema and the table that records which numbered
-- files have been applied. Always safe to run; install.sql and `pggit-supervisor schema install`
-- run it before anything else, then only the numbered files not yet recorded.
DO $$
BEGIN
    IF to_regnamespace('pggit') IS NULL THEN
        CREATE SCHEMA pggit;
        -- marks what this module created, so that its grants never touch a real pgGit install
        COMMENT ON SCHEMA pggit IS 'pgGit (created by pggit-supervisor)';
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS pggit.backup_schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text        NOT NULL DEFAULT session_user
);
