-- 003: input validation shared by every public function. Each helper raises SQLSTATE 22023
-- with a message naming the parameter (also set as the error's COLUMN field) and a HINT with
-- what is allowed, before anything is written.

CREATE OR REPLACE FUNCTION pggit._invalid(p_param text, p_problem text, p_hint text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'pggit: invalid %: %', p_param, p_problem
        USING ERRCODE = '22023', COLUMN = p_param, HINT = p_hint;
END
$$;

-- A short, printable rendering of a bad value for error messages.
CREATE OR REPLACE FUNCTION pggit._show(p_value text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT CASE WHEN p_value IS NULL THEN 'NULL'
                ELSE quote_literal(left(regexp_replace(p_value, '[[:cntrl:]]', '?', 'g'), 60))
                     || CASE WHEN length(p_value) > 60 THEN '...' ELSE '' END
           END
$$;

CREATE OR REPLACE FUNCTION pggit._require_text(p_param text, p_value text, p_pattern text,
                                              p_max_length integer, p_hint text)
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF p_value IS NULL THEN
        PERFORM pggit._invalid(p_param, 'must not be NULL', p_hint);
    ELSIF length(p_value) > p_max_length THEN
        PERFORM pggit._invalid(p_param, format('longer than %s characters', p_max_length), p_hint);
    ELSIF p_value !~ p_pattern THEN
        PERFORM pggit._invalid(p_param, format('%s is not allowed', pggit._show(p_value)), p_hint);
    END IF;
    RETURN p_value;
END
$$;

-- Names handed to tools as their own arguments (a pgBackRest stanza, a Barman server).
CREATE OR REPLACE FUNCTION pggit._require_name(p_param text, p_value text) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT pggit._require_text(p_param, p_value, '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$', 63,
        'a name of 1-63 characters: letters, digits, _ . - (starting with a letter or digit)')
$$;

-- An absolute directory, normalised: no '..', no control characters, no shell metacharacters.
CREATE OR REPLACE FUNCTION pggit._require_dir(p_param text, p_value text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_path text;
    c_hint constant text := 'an absolute directory such as /backups/daily: characters A-Z a-z 0-9 . _ - + @ = , ~ and /, no ".." (at most 1024 characters)';
BEGIN
    PERFORM pggit._require_text(p_param, p_value, '^/[A-Za-z0-9._/+@=,~-]*$', 1024, c_hint);
    IF '/' || p_value || '/' LIKE '%/../%' THEN
        PERFORM pggit._invalid(p_param, format('%s contains ".."', pggit._show(p_value)), c_hint);
    END IF;
    v_path := regexp_replace(p_value, '/+', '/', 'g');
    LOOP
        EXIT WHEN v_path NOT LIKE '%/./%' AND v_path NOT LIKE '%/.';
        v_path := regexp_replace(regexp_replace(v_path, '/\./', '/', 'g'), '/\.$', '/');
    END LOOP;
    IF length(v_path) > 1 THEN
        v_path := rtrim(v_path, '/');
    END IF;
    RETURN coalesce(nullif(v_path, ''), '/');
END
$$;

-- p_options must be an object whose keys are all known; NULL means no options.
CREATE OR REPLACE FUNCTION pggit._require_options(p_param text, p_options jsonb, p_allowed text[])
RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_key text;
BEGIN
    IF p_options IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    IF jsonb_typeof(p_options) <> 'object' THEN
        PERFORM pggit._invalid(p_param, format('must be a JSON object, got a JSON %s', jsonb_typeof(p_options)),
            'allowed keys: ' || array_to_string(p_allowed, ', '));
    END IF;
    FOR v_key IN SELECT k FROM jsonb_object_keys(p_options) AS k ORDER BY k LOOP
        IF NOT v_key = ANY (p_allowed) THEN
            PERFORM pggit._invalid(p_param || '.' || pggit._show(v_key), 'unknown option',
                'allowed keys: ' || array_to_string(p_allowed, ', '));
        END IF;
    END LOOP;
    RETURN p_options;
END
$$;

-- An integer option, given as a JSON number or as a string of digits (the guide writes "9").
CREATE OR REPLACE FUNCTION pggit._opt_int(p_param text, p_options jsonb, p_key text,
                                         p_min bigint, p_max bigint, p_default bigint DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_value jsonb := p_options -> p_key;
    v_text  text;
    v_hint  text := format('an integer from %s to %s (a JSON number or a string of digits)', p_min, p_max);
    v_int   numeric;
BEGIN
    IF v_value IS NULL OR jsonb_typeof(v_value) = 'null' THEN
        RETURN p_default;
    END IF;
    IF jsonb_typeof(v_value) = 'number' THEN
        v_text := v_value::text;
    ELSIF jsonb_typeof(v_value) = 'string' THEN
        v_text := v_value #>> '{}';
    ELSE
        PERFORM pggit._invalid(p_param || '.' || p_key, format('must be an integer, got a JSON %s', jsonb_typeof(v_value)), v_hint);
    END IF;
    IF v_text !~ '^[ \t\r\n]*-?[0-9]{1,18}[ \t\r\n]*$' THEN
        PERFORM pggit._invalid(p_param || '.' || p_key, format('%s is not an integer', pggit._show(v_text)), v_hint);
    END IF;
    v_int := btrim(v_text, E' \t\r\n')::numeric;
    IF v_int < p_min OR v_int > p_max THEN
        PERFORM pggit._invalid(p_param || '.' || p_key, format('%s is out of range', v_int), v_hint);
    END IF;
    RETURN v_int::bigint;
END
$$;

CREATE OR REPLACE FUNCTION pggit._opt_bool(p_param text, p_options jsonb, p_key text, p_default boolean)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_value jsonb := p_options -> p_key;
BEGIN
    IF v_value IS NULL OR jsonb_typeof(v_value) = 'null' THEN
        RETURN p_default;
    ELSIF jsonb_typeof(v_value) = 'boolean' THEN
        RETURN v_value::text::boolean;
    ELSIF jsonb_typeof(v_value) = 'string' AND lower(v_value #>> '{}') IN ('true', 'false') THEN
        RETURN lower(v_value #>> '{}')::boolean;
    END IF;
    PERFORM pggit._invalid(p_param || '.' || p_key, format('must be true or false, got %s', pggit._show(v_value::text)),
        'true or false (a JSON boolean or the string "true" / "false")');
END
$$;

CREATE OR REPLACE FUNCTION pggit._opt_enum(p_param text, p_options jsonb, p_key text,
                                          p_allowed text[], p_default text)
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_value jsonb := p_options -> p_key;
BEGIN
    IF v_value IS NULL OR jsonb_typeof(v_value) = 'null' THEN
        RETURN p_default;
    END IF;
    IF jsonb_typeof(v_value) <> 'string' OR NOT (v_value #>> '{}') = ANY (p_allowed) THEN
        PERFORM pggit._invalid(p_param || '.' || p_key, format('%s is not allowed', pggit._show(v_value #>> '{}')),
            'one of: ' || array_to_string(p_allowed, ', '));
    END IF;
    RETURN v_value #>> '{}';
END
$$;

CREATE OR REPLACE FUNCTION pggit._require_enum(p_param text, p_value text, p_allowed text[])
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
BEGIN
    IF p_value IS NULL OR NOT p_value = ANY (p_allowed) THEN
        PERFORM pggit._invalid(p_param, format('%s is not allowed', pggit._show(p_value)),
            'one of: ' || array_to_string(p_allowed, ', '));
    END IF;
    RETURN p_value;
END
$$;

-- The branch must exist and have a head commit; returns that commit. An unknown branch is an
-- error, never "all backups".
CREATE OR REPLACE FUNCTION pggit._require_branch_head(p_param text, p_branch_name text)
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_head text;
BEGIN
    IF p_branch_name IS NULL THEN
        PERFORM pggit._invalid(p_param, 'must not be NULL', 'the name of an existing branch, e.g. main');
    END IF;
    SELECT b.head_commit_hash INTO v_head FROM pggit.branches b WHERE b.name = p_branch_name;
    IF NOT FOUND THEN
        PERFORM pggit._invalid(p_param, format('no branch named %s', pggit._show(p_branch_name)),
            'existing branches: ' || coalesce((SELECT string_agg(name, ', ' ORDER BY name)
                                                 FROM (SELECT name FROM pggit.branches ORDER BY name LIMIT 20) s), 'none'));
    END IF;
    IF v_head IS NULL THEN
        PERFORM pggit._invalid(p_param, format('branch %s has no commits yet', pggit._show(p_branch_name)),
            'commit to the branch first: a backup is linked to the commit it was taken at');
    END IF;
    RETURN v_head;
END
$$;

-- Options every scheduling function takes: queue behaviour and notifications.
CREATE OR REPLACE FUNCTION pggit._common_options(p_param text, p_options jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pggit, pg_temp AS $$
DECLARE
    v_url jsonb := p_options -> 'webhook_url';
BEGIN
    IF v_url IS NOT NULL AND jsonb_typeof(v_url) <> 'null' THEN
        IF jsonb_typeof(v_url) <> 'string'
           OR length(v_url #>> '{}') > 2048
           OR (v_url #>> '{}') !~ '^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~:/?#@!$&()*+,;=%-]*)?$' THEN
            PERFORM pggit._invalid(p_param || '.webhook_url', format('%s is not an http(s) URL', pggit._show(v_url #>> '{}')),
                'an http:// or https:// URL of at most 2048 characters, without spaces or quotes');
        END IF;
    END IF;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'priority',          pggit._opt_int(p_param, p_options, 'priority', 0, 100, 5),
        'max_attempts',      pggit._opt_int(p_param, p_options, 'max_attempts', 1, 100, 3),
        'timeout_seconds',   pggit._opt_int(p_param, p_options, 'timeout_seconds', 1, 604800),
        'webhook_url',       v_url #>> '{}',
        'notify_on_success', pggit._opt_bool(p_param, p_options, 'notify_on_success', false),
        'notify_on_failure', pggit._opt_bool(p_param, p_options, 'notify_on_failure', v_url IS NOT NULL)));
END
$$;

-- Quotes one word for the human-readable `command` column (never executed).
CREATE OR REPLACE FUNCTION pggit._shell_quote(p_word text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT CASE WHEN p_word ~ '^[A-Za-z0-9_./=:@+,%{}-]+$' THEN p_word
                ELSE '''' || replace(p_word, '''', '''"''"''') || '''' END
$$;

CREATE OR REPLACE FUNCTION pggit._render_command(p_argv text[]) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pggit, pg_temp AS $$
    SELECT string_agg(pggit._shell_quote(w), ' ' ORDER BY n) FROM unnest(p_argv) WITH ORDINALITY AS a (w, n)
$$;

INSERT INTO pggit.backup_schema_migrations (version, name) VALUES (3, '003_validation')
    ON CONFLICT (version) DO NOTHING;
