"""Everything an installed schema consists of, read from the catalogs as comparable text, so two
databases can be compared and every difference printed.

Generic on purpose: whatever later numbered files add (tables, functions, grants, roles) is
covered without touching this module. Objects of PostgreSQL itself are left out; roles are the
pggit_* ones the schema creates.
"""

from __future__ import annotations

import difflib

import psycopg2

_USER_NAMESPACES = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
    "AND n.nspname NOT LIKE 'pg_temp%'"
)

# name -> a query whose rows, each rendered as one line, describe one kind of object
QUERIES: dict[str, str] = {
    "schemas": f"""
        SELECT n.nspname, pg_get_userbyid(n.nspowner), n.nspacl::text, obj_description(n.oid, 'pg_namespace')
        FROM pg_namespace n WHERE {_USER_NAMESPACES}""",
    "relations": f"""
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, pg_get_userbyid(c.relowner), c.relacl::text,
               c.reloptions::text, c.relrowsecurity, c.relforcerowsecurity, obj_description(c.oid, 'pg_class')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACES} AND c.relkind <> 'i'""",
    "columns": f"""
        SELECT n.nspname, c.relname,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
               format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
               a.attidentity, a.attgenerated, co.collname, a.attacl::text, col_description(c.oid, a.attnum)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
        WHERE {_USER_NAMESPACES} AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind <> 'i'""",
    "constraints": f"""
        SELECT n.nspname, coalesce(c.relname, t.typname), co.conname, co.contype, pg_get_constraintdef(co.oid),
               co.condeferrable, co.condeferred, co.convalidated
        FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
        LEFT JOIN pg_class c ON c.oid = co.conrelid LEFT JOIN pg_type t ON t.oid = co.contypid
        WHERE {_USER_NAMESPACES}""",
    "indexes": f"""
        SELECT n.nspname, c.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACES}""",
    "views": f"""
        SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACES} AND c.relkind IN ('v', 'm')""",
    "sequences": f"""
        SELECT n.nspname, c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax,
               s.seqmin, s.seqcache, s.seqcycle
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACES}""",
    "functions": f"""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.prokind, l.lanname,
               p.prosecdef, p.provolatile, p.proisstrict, p.proparallel, p.proleakproof, p.proconfig::text,
               pg_get_userbyid(p.proowner), p.proacl::text, p.prosrc, obj_description(p.oid, 'pg_proc')
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
        WHERE {_USER_NAMESPACES}""",
    "triggers": f"""
        SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NAMESPACES} AND NOT t.tgisinternal""",
    "types": f"""
        SELECT n.nspname, t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod), t.typnotnull,
               t.typdefault, pg_get_userbyid(t.typowner), t.typacl::text,
               (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        LEFT JOIN pg_class c ON c.oid = t.typrelid
        WHERE {_USER_NAMESPACES} AND t.typelem = 0 AND (c.oid IS NULL OR c.relkind = 'c')""",
    "policies": """
        SELECT schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check FROM pg_policies""",
    "default privileges": """
        SELECT pg_get_userbyid(d.defaclrole), d.defaclnamespace::regnamespace::text, d.defaclobjtype,
               d.defaclacl::text
        FROM pg_default_acl d""",
    "database grants": """
        SELECT a::text FROM pg_database, unnest(datacl) a
        WHERE datname = current_database() AND a::text LIKE '%pggit%'""",
    "roles": """
        SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
               rolbypassrls, rolconnlimit, rolconfig::text
        FROM pg_roles WHERE rolname LIKE 'pggit%'""",
    "role memberships": """
        SELECT r.rolname, m.rolname, am.admin_option
        FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
        WHERE r.rolname LIKE 'pggit%' OR m.rolname LIKE 'pggit%'""",
    "extensions": "SELECT extname, extversion FROM pg_extension",
    "event triggers": """
        SELECT evtname, evtevent, evtenabled, evtfoid::regproc::text, evttags::text FROM pg_event_trigger""",
    "recorded migrations": "SELECT version, name FROM pggit.backup_schema_migrations",
}


def snapshot(dsn: str) -> dict[str, list[str]]:
    """kind -> sorted lines, one per object of that kind."""
    conn = psycopg2.connect(dsn)
    try:
        return read(conn)
    finally:
        conn.rollback()
        conn.close()


def read(conn) -> dict[str, list[str]]:
    """The snapshot through an open connection (it sees that connection's uncommitted changes)."""
    with conn.cursor() as cur:
        found = {}
        for kind, sql in QUERIES.items():
            cur.execute(sql)
            found[kind] = sorted(" | ".join("" if v is None else str(v) for v in row) for row in cur.fetchall())
        cur.execute(f"""SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                        JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE {_USER_NAMESPACES} AND c.relkind IN ('r', 'p') ORDER BY 1""")
        tables = [row[0] for row in cur.fetchall()]
        counts = []
        for table in tables:  # names read from the catalog, quoted by format('%I')
            cur.execute(f"SELECT count(*) FROM {table}")
            counts.append(f"{table} | {cur.fetchone()[0]} rows")
        found["table row counts"] = counts
    return found


def differences(
    expected: dict[str, list[str]],
    actual: dict[str, list[str]],
    expected_name: str = "fresh install",
    actual_name: str = "upgraded",
) -> str:
    """A unified diff per kind of object that differs; empty when the two are the same."""
    parts = []
    for kind in expected:
        if expected[kind] != actual.get(kind):
            diff = difflib.unified_diff(
                expected[kind],
                actual.get(kind, []),
                fromfile=f"{kind}: {expected_name}",
                tofile=f"{kind}: {actual_name}",
                lineterm="",
                n=0,
            )
            parts.append("\n".join(diff))
    return "\n\n".join(parts)
