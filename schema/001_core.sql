-- 001: the parts of pgGit core the backup module needs, created only where absent
-- (a real pgGit install already has them). `main` gets an initial commit so that the guide's
-- first example, SELECT pggit.backup_pgbackrest('full', 'main', 'main'), works on a fresh
-- install (the original left main without a head, and every backup call raised).

DO $$
BEGIN
    IF to_regclass('pggit.branches') IS NULL THEN
        CREATE TABLE pggit.branches (
            id               serial PRIMARY KEY,
            name             text        NOT NULL UNIQUE,
            head_commit_hash text,
            created_at       timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE pggit.branches IS 'pgGit core (created by pggit-supervisor)';
    END IF;
    IF to_regclass('pggit.commits') IS NULL THEN
        CREATE TABLE pggit.commits (
            id          bigserial PRIMARY KEY,
            hash        text        NOT NULL UNIQUE,
            branch_id   integer     REFERENCES pggit.branches (id),
            parent_hash text,
            message     text,
            author      text        NOT NULL DEFAULT session_user,
            created_at  timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE pggit.commits IS 'pgGit core (created by pggit-supervisor)';
    END IF;
END
$$;

DO $$
DECLARE
    v_branch_id integer;
    v_head      text;
BEGIN
    SELECT id, head_commit_hash INTO v_branch_id, v_head FROM pggit.branches WHERE name = 'main';
    IF NOT FOUND THEN
        INSERT INTO pggit.branches (name) VALUES ('main') RETURNING id INTO v_branch_id;
    END IF;
    IF v_head IS NULL THEN
        v_head := encode(sha256(convert_to('pggit initial commit ' || gen_random_uuid()::text, 'UTF8')), 'hex');
        INSERT INTO pggit.commits (hash, branch_id, message) VALUES (v_head, v_branch_id, 'Initial commit');
        UPDATE pggit.branches SET head_commit_hash = v_head WHERE id = v_branch_id;
    END IF;
END
$$;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (1, '001_core')
    ON CONFLICT (version) DO NOTHING;
