-- pgGit backup automation: install or upgrade in place.
--   psql -v ON_ERROR_STOP=1 -d your_database -f schema/install.sql
-- Runs the bootstrap, then each numbered file not yet recorded in
-- pggit.backup_schema_migrations, each in its own transaction. Running it again changes nothing.
-- `pggit-supervisor schema install --dsn DSN` applies the same files.
\set ON_ERROR_STOP 1
\set QUIET 1
SET client_min_messages = warning;
-- one installer at a time (the same key as `pggit-supervisor schema install`)
SELECT pg_advisory_lock(482771167604) \gset

-- every time, before anything is written: refuses a pggit schema a non-superuser controls
\ir preflight.sql
\ir 000_bootstrap.sql

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 1) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 001_core.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 2) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 002_backups.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 3) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 003_validation.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 4) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 004_scheduling.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 5) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 005_queue.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 6) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 006_metadata.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 7) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 007_roles.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 8) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 008_restore_tests.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 9) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 009_claims.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 10) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 010_backup_guards.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 11) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 011_hardening.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 12) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 012_vocabulary.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 13) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 013_command_ran.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 14) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 014_schedules.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 15) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 015_retention.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 16) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 016_retention_removal.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 17) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 017_retention_jobs.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 18) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 018_outbox.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 19) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 019_status.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 20) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 020_archive_status.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 21) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 021_drill_schedules.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 22) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 022_target_summary.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 23) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 023_target_identity.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 24) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 024_claim_order.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 25) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 025_target_sets.sql
COMMIT;
\endif

SELECT NOT EXISTS (SELECT 1 FROM pggit.backup_schema_migrations WHERE version = 26) AS pggit_apply \gset
\if :pggit_apply
BEGIN;
\ir 026_target_tally.sql
COMMIT;
\endif

SELECT 'pggit backup schema version ' || max(version) AS installed FROM pggit.backup_schema_migrations;
