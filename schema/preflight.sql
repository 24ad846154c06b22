-- pggit-supervisor install preflight: run first by every install (install.sql and
-- `pggit-supervisor schema install`), every time, before anything is written. Not numbered: it
-- records nothing and changes nothing; it refuses.
--
-- Why: the module's SECURITY DEFINER functions belong to the installing superuser and call
-- helpers, read tables and resolve functions, operators and types in schema pggit by name. Whoever
-- owns, or may create, an object there decides what code those functions run, as superuser. A
-- real pgGit install keeps its own pggit schema and its branches / commits tables, and we accept
-- them, but only when nothing in them can run code a non-superuser wrote:
--   * the installing role is a superuser;
--   * schema pggit, and every relation, function, type, operator, collation, ... in it, is owned
--     by a superuser, and no role but a superuser may CREATE in schema pggit;
--   * nothing the pggit tables carry (column types and defaults, CHECK constraints, indexes,
--     triggers, rules, policies) depends on a function, type, operator or collation owned by a
--     non-superuser, no non-superuser holds TRIGGER on them, and no table of another owner
--     inherits from them (a query of the parent reads the child).
DO $preflight$
DECLARE
    v_ns       oid := to_regnamespace('pggit');
    v_problems text[] := '{}';
    v_row      record;
BEGIN
    IF NOT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user), false) THEN
        RAISE EXCEPTION 'pggit: the backup schema must be installed by a superuser, not by %', current_user
            USING ERRCODE = '42501',
                  HINT = 'run the install as a superuser (e.g. postgres): its SECURITY DEFINER functions belong to the installing role';
    END IF;
    IF v_ns IS NULL THEN
        RETURN;  -- a fresh database: the bootstrap creates the schema
    END IF;

    -- the schema itself
    IF NOT (SELECT r.rolsuper FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.oid = v_ns) THEN
        v_problems := v_problems || format('schema pggit is owned by %s, not a superuser (fix: ALTER SCHEMA pggit OWNER TO postgres)',
            (SELECT n.nspowner::regrole::text FROM pg_namespace n WHERE n.oid = v_ns));
    END IF;
    IF EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a
                WHERE n.oid = v_ns AND a.grantee = 0 AND a.privilege_type = 'CREATE') THEN
        v_problems := v_problems || 'PUBLIC may CREATE in schema pggit (fix: REVOKE CREATE ON SCHEMA pggit FROM PUBLIC)'::text;
    ELSE
        FOR v_row IN SELECT r.rolname FROM pg_roles r
                      WHERE NOT r.rolsuper AND has_schema_privilege(r.oid, v_ns, 'CREATE') ORDER BY r.rolname LOOP
            v_problems := v_problems || format('role %s may CREATE in schema pggit, and is not a superuser '
                || '(fix: REVOKE CREATE ON SCHEMA pggit FROM %s, or from the role it inherits it from)', v_row.rolname, quote_ident(v_row.rolname));
        END LOOP;
    END IF;

    -- every object in the schema
    FOR v_row IN
        WITH objects (what, alter_as, owner) AS (
            SELECT format('%s %s', CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                                                  WHEN 'f' THEN 'foreign table' WHEN 'c' THEN 'type' ELSE 'table' END, c.oid::regclass),
                   format('ALTER %s %s', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                                        WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END, c.oid::regclass),
                   c.relowner
              FROM pg_class c WHERE c.relnamespace = v_ns AND c.relkind NOT IN ('i', 'I', 't')
            UNION ALL
            SELECT format('%s %s', CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END, p.oid::regprocedure),
                   format('ALTER %s %s', CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, p.oid::regprocedure),
                   p.proowner
              FROM pg_proc p WHERE p.pronamespace = v_ns
            UNION ALL
            SELECT format('type %s', t.oid::regtype), format('ALTER %s %s', CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.oid::regtype),
                   t.typowner
              FROM pg_type t
             WHERE t.typnamespace = v_ns AND t.typrelid = 0  -- a relation's row type goes with the relation
               AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)  -- an array type goes with its element
            UNION ALL
            SELECT format('operator %s', o.oid::regoperator), format('ALTER OPERATOR %s', o.oid::regoperator), o.oprowner
              FROM pg_operator o WHERE o.oprnamespace = v_ns
            UNION ALL
            SELECT format('collation %s', co.oid::regcollation), format('ALTER COLLATION %s', co.oid::regcollation), co.collowner
              FROM pg_collation co WHERE co.collnamespace = v_ns
            UNION ALL
            SELECT format('conversion pggit.%s', quote_ident(cv.conname)), format('ALTER CONVERSION pggit.%s', quote_ident(cv.conname)), cv.conowner
              FROM pg_conversion cv WHERE cv.connamespace = v_ns
            UNION ALL
            SELECT format('operator class pggit.%s', quote_ident(oc.opcname)),
                   format('ALTER OPERATOR CLASS pggit.%s USING %s', quote_ident(oc.opcname), am.amname), oc.opcowner
              FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod WHERE oc.opcnamespace = v_ns
            UNION ALL
            SELECT format('operator family pggit.%s', quote_ident(f.opfname)),
                   format('ALTER OPERATOR FAMILY pggit.%s USING %s', quote_ident(f.opfname), am.amname), f.opfowner
              FROM pg_opfamily f JOIN pg_am am ON am.oid = f.opfmethod WHERE f.opfnamespace = v_ns
            UNION ALL
            SELECT format('text search configuration %s', cfg.oid::regconfig), format('ALTER TEXT SEARCH CONFIGURATION %s', cfg.oid::regconfig), cfg.cfgowner
              FROM pg_ts_config cfg WHERE cfg.cfgnamespace = v_ns
            UNION ALL
            SELECT format('text search dictionary %s', d.oid::regdictionary), format('ALTER TEXT SEARCH DICTIONARY %s', d.oid::regdictionary), d.dictowner
              FROM pg_ts_dict d WHERE d.dictnamespace = v_ns
            UNION ALL
            SELECT format('statistics pggit.%s', quote_ident(s.stxname)), format('ALTER STATISTICS pggit.%s', quote_ident(s.stxname)), s.stxowner
              FROM pg_statistic_ext s WHERE s.stxnamespace = v_ns
        )
        SELECT o.what, o.alter_as, o.owner::regrole::text AS owner_name
          FROM objects o JOIN pg_roles r ON r.oid = o.owner
         WHERE NOT r.rolsuper
         ORDER BY o.what
    LOOP
        v_problems := v_problems || format('%s is owned by %s, not a superuser (fix: %s OWNER TO postgres, or drop it)',
            v_row.what, v_row.owner_name, v_row.alter_as);
    END LOOP;

    -- what the pggit tables carry: code or types of a non-superuser, reached through column types
    -- and defaults, CHECK constraints, index expressions, triggers, rules or policies
    FOR v_row IN
        WITH carried (classid, objid, objsubid, refclassid, refobjid) AS (
            SELECT d.classid, d.objid, d.objsubid, d.refclassid, d.refobjid
              FROM pg_depend d
             WHERE d.deptype IN ('n', 'a')
               AND d.refclassid IN ('pg_proc'::regclass, 'pg_type'::regclass, 'pg_operator'::regclass, 'pg_collation'::regclass)
               AND CASE d.classid
                       WHEN 'pg_class'::regclass THEN (SELECT c.relnamespace FROM pg_class c WHERE c.oid = d.objid)
                       WHEN 'pg_attrdef'::regclass THEN (SELECT c.relnamespace FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid WHERE a.oid = d.objid)
                       WHEN 'pg_constraint'::regclass THEN (SELECT coalesce(c.relnamespace, t.typnamespace) FROM pg_constraint k
                                                               LEFT JOIN pg_class c ON c.oid = k.conrelid LEFT JOIN pg_type t ON t.oid = k.contypid
                                                              WHERE k.oid = d.objid)
                       WHEN 'pg_trigger'::regclass THEN (SELECT c.relnamespace FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid WHERE g.oid = d.objid)
                       WHEN 'pg_policy'::regclass THEN (SELECT c.relnamespace FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE p.oid = d.objid)
                       WHEN 'pg_rewrite'::regclass THEN (SELECT c.relnamespace FROM pg_rewrite w JOIN pg_class c ON c.oid = w.ev_class WHERE w.oid = d.objid)
                       WHEN 'pg_type'::regclass THEN (SELECT t.typnamespace FROM pg_type t WHERE t.oid = d.objid)
                       WHEN 'pg_proc'::regclass THEN (SELECT p.pronamespace FROM pg_proc p WHERE p.oid = d.objid)
                   END = v_ns
        )
        SELECT DISTINCT pg_describe_object(k.classid, k.objid, k.objsubid) AS what,
               pg_describe_object(k.refclassid, k.refobjid, 0) AS uses,
               r.rolname AS owner_name
          FROM carried k
          JOIN pg_roles r ON r.oid = CASE k.refclassid
                                         WHEN 'pg_proc'::regclass THEN (SELECT p.proowner FROM pg_proc p WHERE p.oid = k.refobjid)
                                         WHEN 'pg_type'::regclass THEN (SELECT t.typowner FROM pg_type t WHERE t.oid = k.refobjid)
                                         WHEN 'pg_operator'::regclass THEN (SELECT o.oprowner FROM pg_operator o WHERE o.oid = k.refobjid)
                                         WHEN 'pg_collation'::regclass THEN (SELECT c.collowner FROM pg_collation c WHERE c.oid = k.refobjid)
                                     END
         WHERE NOT r.rolsuper
         ORDER BY 1, 2
    LOOP
        v_problems := v_problems || format('%s uses %s, owned by %s, not a superuser: its code would run inside the module''s '
            || 'SECURITY DEFINER functions (fix: drop or replace that use, or have a superuser own %s)', v_row.what, v_row.uses,
            v_row.owner_name, v_row.uses);
    END LOOP;
    FOR v_row IN SELECT c.oid::regclass AS rel, r.rolname FROM pg_class c, pg_roles r
                  WHERE c.relnamespace = v_ns AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT r.rolsuper
                    AND has_table_privilege(r.oid, c.oid, 'TRIGGER')
                  ORDER BY 1, 2 LOOP
        v_problems := v_problems || format('role %s holds TRIGGER on %s, and is not a superuser (fix: REVOKE TRIGGER ON %s FROM %s)',
            v_row.rolname, v_row.rel, v_row.rel, quote_ident(v_row.rolname));
    END LOOP;
    FOR v_row IN SELECT i.inhrelid::regclass AS child, i.inhparent::regclass AS parent, c.relowner::regrole::text AS owner_name
                   FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent JOIN pg_class c ON c.oid = i.inhrelid
                   JOIN pg_roles r ON r.oid = c.relowner
                  WHERE p.relnamespace = v_ns AND NOT r.rolsuper ORDER BY 1 LOOP
        v_problems := v_problems || format('table %s inherits from %s and is owned by %s, not a superuser (fix: ALTER TABLE %s NO INHERIT %s)',
            v_row.child, v_row.parent, v_row.owner_name, v_row.child, v_row.parent);
    END LOOP;

    IF cardinality(v_problems) > 0 THEN
        RAISE EXCEPTION 'pggit: refusing to install into schema pggit: % (%)',
                array_to_string(v_problems[1:20], '; '),
                CASE WHEN cardinality(v_problems) > 20 THEN format('%s problems, the first 20 shown', cardinality(v_problems))
                     ELSE format('%s problem(s)', cardinality(v_problems)) END
            USING ERRCODE = '42501',
                  HINT = 'the module''s SECURITY DEFINER functions run as the installing superuser and use schema pggit by name: '
                      || 'everything in it must belong to a superuser, and only superusers may create objects there';
    END IF;
END
$preflight$;
