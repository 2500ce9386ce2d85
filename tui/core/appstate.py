"""What an application needs from a database beyond its rows: collected at backup time into the
metadata (`"app_state"`), compared with the target after a restore.

A restore can bring back every row and still break the application: the API roles' grants gone
(PostgREST answers 401 with every row present), row level security off or a policy missing (rows
leak, or vanish for the API), a sequence behind its column (the next insert hits a duplicate
key), the realtime publication without its tables. `collect` reads these from the catalogs,
`compare` tells what the target lacks.

What is recorded (`collect`, format 1; JSON, lists sorted):
- `api_roles`: which of anon, authenticated, service_role exist.
- `grants`: the application objects (schema, table, view, materialized view, foreign table,
  sequence, function) on which an API role holds a privilege, grouped by kind, schema and
  privileges: `{"kind", "schema", "privileges": {role: [privileges]}, "names": [...]}` (a
  function's name carries its argument types; a schema's is ""). Privileges are the object's
  ACL, or the owner's default ACL when it has none; PUBLIC and grant options are not recorded.
- `rls`: the tables with RLS enabled or forced or with policies, grouped alike:
  `{"schema", "enabled", "forced", "policies": [names], "tables": [...]}`.
- `sequences`: the sequences owned by an integer column (serial or identity), grouped by
  schema, table schema, kind and increment, as three lists of equal length: `names` (the
  sequences), `tables` and `columns` (what owns each). Their values are deliberately not
  read at backup time: sequences are not transactional (the snapshot does not hold them),
  and reading one locks it until the backup's long transaction ends (thousands of sequences
  would fill the lock table beside pg_dump). After a restore the next value a sequence hands
  out must lie beyond its column's max (min for descending sequences).
- `extensions` (name, schema, version), `publications` (name, FOR ALL TABLES, tables, and on
  PostgreSQL 15+ schemas), `event_triggers` (name, event, enabled).
"Application objects" are those outside pg_catalog, information_schema and the toast/temp
schemas, and not members of an extension (an extension's objects come with its script).

Severities (`compare`): 'fail' for what breaks the application and the restore could have
brought back; 'warning' for what the target may not be able to take, or what is extra.
- grants. fail: an API role lost a privilege on an object (also when the object is missing);
  an API role the backup had does not exist. warning: an API role holds a privilege on an
  object that the backup did not grant it (the target's default privileges, say).
- rls. fail: RLS no longer enabled, or no longer forced, on a table that had it. warning: RLS
  enabled on a table that had none.
- policies. fail: a policy name missing on its table. warning: a policy the backup lacked.
- sequences. fail: the next value it hands out is not beyond its column's max; the sequence is
  missing. warning: it could not be read (no privilege).
- extensions. fail: missing while the target could create it (a superuser, or an available
  trusted extension). warning: missing because the target cannot create it (not installed on
  the server; or the user is not a superuser and it is not trusted), with that reason; in
  another schema than in the backup.
- publications. fail: missing; no longer FOR ALL TABLES; lost a table or a schema. warning: a
  FOR ALL TABLES publication missing on a non-superuser target (only a superuser may create
  one).
- event triggers. fail: missing on a superuser target. warning: missing on a non-superuser
  target (only a superuser may own one; on Supabase they belong to supabase_admin), with that
  reason; disabled.
Grants, RLS, policies, sequences and publications' tables are compared only in the schemas the
restore restored (`schemas`; None: all); extensions, publications themselves and event
triggers belong to the database and are always compared.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

FORMAT = 1
API_ROLES = ("anon", "authenticated", "service_role")
SEQUENCE_BATCH = 50  # sequences read per statement (each locks the sequence and its table)

_APP_SCHEMA = ("{n}.nspname NOT IN ('pg_catalog', 'information_schema')"
               " AND {n}.nspname !~ '^pg_(toast|temp_|toast_temp_)'")
_NOT_MEMBER = ("NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{cat}'::regclass"
               " AND d.objid = {oid} AND d.deptype = 'e')")


@dataclass(frozen=True)
class AppDifference:
    kind: str  # grants, rls, policies, sequences, extensions, publications, event triggers
    object: str
    detail: str
    severity: str  # 'fail' | 'warning'

    def describe(self) -> str:
        return f"{'FAIL' if self.severity == 'fail' else 'WARNING'} {self.kind}: {self.detail}"

    def as_json(self) -> dict[str, str]:
        return asdict(self)


Conn = psycopg.Connection[Any]


def _app(n: str = "n") -> str:
    return _APP_SCHEMA.format(n=n)


def _member(cat: str, oid: str) -> str:
    return _NOT_MEMBER.format(cat=cat, oid=oid)


def collect(conn: Conn, *, objects: bool = False) -> dict[str, Any]:
    """The application state of `conn`'s database, from catalog reads only (no locks on
    application tables). Inside a transaction (the backup's REPEATABLE READ snapshot) it reads
    what that snapshot sees, under a savepoint; otherwise in a short transaction of its own.
    With `objects`, also every application object's name (to tell a missing object from one
    without grants), as `compare` wants of a target."""
    started = time.perf_counter()
    with conn.transaction():
        # Function signatures and names come out schema-qualified whatever the session's
        # search_path, so both sides spell them alike; the caller's setting is put back.
        # No JIT compilation either: it costs far more than these plans save (200 ms once).
        row = conn.execute("SELECT current_setting('search_path'), current_setting('jit'),"
                           " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
                           " current_setting('server_version_num')::int").fetchone()
        assert row is not None
        saved, jit = str(row[0]), str(row[1])
        superuser, version = bool(row[2]), int(str(row[3]))
        conn.execute("SELECT set_config('search_path', 'pg_catalog', true),"
                     " set_config('jit', 'off', true)")
        # (On an error the savepoint's rollback puts them back.)
        state = _collect(conn, superuser, version, objects)
        conn.execute("SELECT set_config('search_path', %s, true), set_config('jit', %s, true)",
                     [saved, jit])
    state["collect_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return state


# The effective ACLs of the application objects, grouped by ACL (thousands of tables share a
# few), and only then exploded into the API roles' privileges.
_GRANTS = f"""
WITH api AS (SELECT oid, rolname::text FROM pg_roles WHERE rolname = ANY(%s)),
ext AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e'),
objs AS (
  SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
           WHEN 'f' THEN 'foreign table' WHEN 'S' THEN 'sequence' ELSE 'table' END AS kind,
         n.nspname::text AS schema, c.relname::text AS name,
         COALESCE(c.relacl, acldefault(
           CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner)) AS acl
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {_app()}
    AND c.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_class'::regclass)
  UNION ALL
  SELECT 'function', n.nspname::text,
         p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
         COALESCE(p.proacl, acldefault('f', p.proowner))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE {_app()} AND p.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_proc'::regclass)
  UNION ALL
  SELECT 'schema', n.nspname::text, '', COALESCE(n.nspacl, acldefault('n', n.nspowner))
  FROM pg_namespace n
  WHERE {_app()}
    AND n.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_namespace'::regclass)
),
groups AS (
  SELECT kind, schema, acl::text AS acl, array_agg(name ORDER BY name) AS names
  FROM objs GROUP BY kind, schema, acl::text)
SELECT g.kind, g.schema, p.privileges::text, g.names
FROM groups g, LATERAL (
  SELECT jsonb_object_agg(rolname, privs) AS privileges FROM (
    SELECT api.rolname, array_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type) AS privs
    FROM aclexplode(g.acl::aclitem[]) a JOIN api ON api.oid = a.grantee GROUP BY 1) x) p
WHERE p.privileges IS NOT NULL
"""

_RLS = f"""
SELECT n.nspname::text, c.relrowsecurity, c.relforcerowsecurity, pol.names,
       array_agg(c.relname::text ORDER BY c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
     LATERAL (SELECT ARRAY(SELECT polname::text FROM pg_policy WHERE polrelid = c.oid
                           ORDER BY 1) AS names) pol
WHERE c.relkind IN ('r', 'p') AND {_app()}
  AND c.oid NOT IN (SELECT objid FROM pg_depend
                    WHERE deptype = 'e' AND classid = 'pg_class'::regclass)
  AND (%s OR c.relrowsecurity OR c.relforcerowsecurity OR cardinality(pol.names) > 0)
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""

# Sequences owned by an integer column ('a': serial's OWNED BY, 'i': identity).
_SEQUENCES = f"""
SELECT sn.nspname, s.relname, tn.nspname, t.relname, a.attname, d.deptype::text,
       q.seqincrement
FROM pg_sequence q
JOIN pg_class s ON s.oid = q.seqrelid
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = q.seqrelid
                AND d.objsubid = 0 AND d.refclassid = 'pg_class'::regclass
                AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype)
  AND {_app('tn')}
  AND s.oid NOT IN (SELECT objid FROM pg_depend
                    WHERE deptype = 'e' AND classid = 'pg_class'::regclass)
ORDER BY 1, 2
"""


def _collect(conn: Conn, superuser: bool, version: int, objects: bool) -> dict[str, Any]:
    api_roles = sorted(str(r[0]) for r in conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(API_ROLES)]).fetchall())
    # Objects with the same privileges are listed together: far smaller metadata for
    # thousands of tables that share two or three sets of grants.
    merged: dict[tuple[str, str, str], list[str]] = {}
    for r in conn.execute(_GRANTS, [api_roles]).fetchall() if api_roles else []:
        privileges = json.dumps(dict(sorted(json.loads(str(r[2])).items())))
        merged.setdefault((str(r[0]), str(r[1]), privileges), []).extend(str(n) for n in r[3])
    grants = [{"kind": kind, "schema": schema, "privileges": json.loads(privileges),
               "names": sorted(names)}
              for (kind, schema, privileges), names in sorted(merged.items())]
    rls = [{"schema": str(r[0]), "enabled": bool(r[1]), "forced": bool(r[2]),
            "policies": [str(p) for p in r[3]], "tables": [str(t) for t in r[4]]}
           for r in conn.execute(_RLS, [objects]).fetchall()]
    owned: dict[tuple[str, str, bool, int], list[tuple[str, str, str]]] = {}
    for r in conn.execute(_SEQUENCES).fetchall():
        owned.setdefault((str(r[0]), str(r[2]), r[5] == "i", int(str(r[6]))), []).append(
            (str(r[1]), str(r[3]), str(r[4])))
    sequences = [
        {"schema": schema, "table_schema": table_schema, "identity": identity,
         "increment": increment, "names": [n for n, _t, _c in seqs],
         "tables": [t for _n, t, _c in seqs], "columns": [c for _n, _t, c in seqs]}
        for (schema, table_schema, identity, increment), seqs in sorted(owned.items())]

    extensions = [
        {"name": str(r[0]), "schema": str(r[1]), "version": str(r[2])}
        for r in conn.execute(
            "SELECT e.extname, n.nspname, e.extversion FROM pg_extension e"
            " JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1").fetchall()]

    pub_schemas = ("ARRAY(SELECT n.nspname::text FROM pg_publication_namespace pn"
                   " JOIN pg_namespace n ON n.oid = pn.pnnspid WHERE pn.pnpubid = p.oid"
                   " ORDER BY 1)" if version >= 150000 else "ARRAY[]::text[]")
    publications = [
        {"name": str(r[0]), "all_tables": bool(r[1]),
         "tables": [list(t) for t in zip(r[2], r[3], strict=True)], "schemas": list(r[4])}
        for r in conn.execute(
            "SELECT p.pubname, p.puballtables,"
            " ARRAY(SELECT n.nspname::text FROM pg_publication_rel pr"
            "       JOIN pg_class c ON c.oid = pr.prrelid"
            "       JOIN pg_namespace n ON n.oid = c.relnamespace"
            "       WHERE pr.prpubid = p.oid ORDER BY n.nspname, c.relname),"
            " ARRAY(SELECT c.relname::text FROM pg_publication_rel pr"
            "       JOIN pg_class c ON c.oid = pr.prrelid"
            "       JOIN pg_namespace n ON n.oid = c.relnamespace"
            "       WHERE pr.prpubid = p.oid ORDER BY n.nspname, c.relname),"
            f" {pub_schemas}"
            " FROM pg_publication p ORDER BY 1").fetchall()]

    event_triggers = [
        {"name": str(r[0]), "event": str(r[1]), "enabled": str(r[2]) != "D"}
        for r in conn.execute(
            "SELECT evtname, evtevent, evtenabled::text FROM pg_event_trigger ORDER BY 1"
        ).fetchall()]

    state: dict[str, Any] = {
        "format": FORMAT,
        "api_roles": api_roles,
        "superuser": superuser,
        "grants": grants,
        "rls": rls,
        "sequences": sequences,
        "extensions": extensions,
        "publications": publications,
        "event_triggers": event_triggers,
    }
    if objects:
        state["objects"] = [[str(r[0]), str(r[1]), str(r[2])] for r in conn.execute(
            "SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'"
            " WHEN 'f' THEN 'foreign table' WHEN 'S' THEN 'sequence' ELSE 'table' END,"
            " n.nspname, c.relname"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            f" WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {_app()}"
            " UNION ALL"
            " SELECT 'function', n.nspname,"
            " p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            f" WHERE {_app()} AND {_member('pg_proc', 'p.oid')}"
            " UNION ALL"
            f" SELECT 'schema', n.nspname, '' FROM pg_namespace n WHERE {_app()}").fetchall()]
    return state


def collect_for_backup(conn: Conn) -> dict[str, Any]:
    """`collect` for the backup's metadata: a failure is recorded instead of failing the backup
    (verification then says the application state was not recorded)."""
    try:
        return collect(conn)
    except Exception as exc:  # noqa: BLE001 - the backup itself must not fail for it
        return {"format": FORMAT, "error": str(exc).strip().splitlines()[0]}


def read_sequences(conn: Conn, sequences: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each expected owned sequence: its state on `conn` (last_value, is_called) and its
    column's max (min for a descending one), `SEQUENCE_BATCH` per statement. A batch that
    fails (a missing table or sequence, no privilege) is read one by one; a sequence that
    cannot be read gets its `error`."""
    out: list[dict[str, Any]] = []
    present = {(str(r[0]), str(r[1]), str(r[2])) for r in conn.execute(
        "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('S', 'r', 'p')"
        " AND n.nspname = ANY(%s)",
        [sorted({s["schema"] for s in sequences} | {s["table_schema"] for s in sequences})]
    ).fetchall()}

    def query(batch: list[dict[str, Any]]) -> sql.Composed:
        return sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {i}::int, last_value::numeric, is_called,"
                    " (SELECT {agg}({col})::numeric FROM ONLY {table}) FROM {seq}").format(
                i=sql.Literal(i), agg=sql.SQL("max" if s["increment"] > 0 else "min"),
                col=sql.Identifier(s["column"]),
                table=sql.Identifier(s["table_schema"], s["table"]),
                seq=sql.Identifier(s["schema"], s["name"]))
            for i, s in enumerate(batch))

    def record(s: dict[str, Any], row: tuple[Any, ...] | None, error: str | None) -> None:
        entry: dict[str, Any] = {"schema": s["schema"], "name": s["name"]}
        if error is not None:
            entry["error"] = error
        elif row is not None:
            entry.update(last_value=_int(row[1]), is_called=bool(row[2]),
                         column_value=None if row[3] is None else _int(row[3]))
        out.append(entry)

    readable = []
    for s in sequences:
        if (s["schema"], s["name"], "S") not in present:
            record(s, None, None)  # missing: no state at all
        elif ((s["table_schema"], s["table"], "r") not in present
              and (s["table_schema"], s["table"], "p") not in present):
            record(s, None, f"its table {s['table_schema']}.{s['table']} is missing")
        else:
            readable.append(s)
    for start in range(0, len(readable), SEQUENCE_BATCH):
        batch = readable[start:start + SEQUENCE_BATCH]
        try:
            rows = {int(str(r[0])): r for r in conn.execute(query(batch)).fetchall()}
        except psycopg.Error:
            rows = None
        for i, s in enumerate(batch):
            if rows is not None:
                record(s, rows.get(i), None)
                continue
            try:
                one = conn.execute(query([s])).fetchone()
            except psycopg.Error as exc:
                record(s, None, str(exc).strip().splitlines()[0])
            else:
                record(s, one, None)
    return out


def _int(value: Any) -> int | str:
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return int(value) if isinstance(value, int) else str(value)


def available_extensions(conn: Conn, names: list[str]) -> dict[str, dict[str, bool]]:
    """Which of `names` the target's server has installed, and whether any version is trusted
    (a non-superuser with CREATE on the database may create a trusted extension)."""
    if not names:
        return {}
    return {str(r[0]): {"trusted": bool(r[1])} for r in conn.execute(
        "SELECT name, bool_or(trusted) FROM pg_available_extension_versions"
        " WHERE name = ANY(%s) GROUP BY name", [names]).fetchall()}


def compare(expected: dict[str, Any], conn_or_actual: Conn | dict[str, Any],
            schemas: set[str] | None = None) -> list[AppDifference]:
    """What the target lacks of `expected` (a backup's `app_state`): fails first. The target is
    a connection (its state is read: catalogs, owned sequences' values and their columns'
    max, the missing extensions' availability) or a state already read (`collect(conn,
    objects=True)`, with `sequence_state` and `extension_availability` from `read_sequences`
    and `available_extensions` for those checks). `schemas`: the schemas the restore restored
    (None: all); grants, RLS, policies, sequences and publications' tables elsewhere are not
    compared."""
    if expected.get("error"):
        return [AppDifference("app state", "backup", "the backup could not record the "
                              f"application state ({expected['error']}): not compared",
                              "warning")]
    if isinstance(conn_or_actual, dict):
        actual = conn_or_actual
    else:
        conn = conn_or_actual
        actual = collect(conn, objects=True)
        actual["sequence_state"] = read_sequences(
            conn, [s for s in sequence_list(expected) if _in(schemas, s["table_schema"])])
        have = {e["name"] for e in actual["extensions"]}
        actual["extension_availability"] = available_extensions(
            conn, sorted(e["name"] for e in expected.get("extensions", [])
                         if e["name"] not in have))
    out = (_grants(expected, actual, schemas) + _rls(expected, actual, schemas)
           + _sequences(expected, actual, schemas) + _extensions(expected, actual)
           + _publications(expected, actual, schemas) + _event_triggers(expected, actual))
    return sorted(out, key=lambda d: d.severity != "fail")


def _in(schemas: set[str] | None, schema: str) -> bool:
    return schemas is None or schema in schemas


def sequence_list(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The grouped `sequences` of a state, one dict per sequence (schema, name, table_schema,
    table, column, identity, increment)."""
    return [{"schema": g["schema"], "name": name, "table_schema": g["table_schema"],
             "table": table, "column": column, "identity": g["identity"],
             "increment": g["increment"]}
            for g in state.get("sequences", [])
            for name, table, column in zip(g["names"], g["tables"], g["columns"], strict=True)]


def _grant_map(state: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, list[str]]]:
    """(kind, schema, name) -> {role: privileges}, from the grouped `grants`."""
    return {(g["kind"], g["schema"], name): g["privileges"]
            for g in state.get("grants", []) for name in g["names"]}


def _rls_map(state: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(schema, table) -> {schema, name, enabled, forced, policies}, from the grouped `rls`."""
    return {(t["schema"], name): {**t, "name": name}
            for t in state.get("rls", []) for name in t["tables"]}


def _label(kind: str, schema: str, name: str) -> str:
    if kind == "schema":
        return f"schema {schema}"
    return f"{schema}.{name}" if kind == "table" else f"{kind} {schema}.{name}"


def _grants(expected: dict[str, Any], actual: dict[str, Any],
            schemas: set[str] | None) -> list[AppDifference]:
    out = []
    present_roles = set(actual.get("api_roles", []))
    for role in expected.get("api_roles", []):
        if role not in present_roles:
            out.append(AppDifference("grants", role, f"role {role} does not exist on the "
                                     "target: every grant to it is lost", "fail"))
    have = _grant_map(actual)
    objects = ({tuple(o) for o in actual["objects"]} if "objects" in actual else None)
    roles = set(expected.get("api_roles", [])) & present_roles
    wanted = {k: v for k, v in _grant_map(expected).items() if _in(schemas, k[1])}
    # Privileges gained are reported only on objects the backup granted the API roles
    # something on: elsewhere the target's own grants cannot be told from the restore's.
    for key in sorted(wanted):
        kind, schema, name = key
        label = _label(kind, schema, name)
        missing = objects is not None and key not in objects
        for role in sorted(roles):
            before = set(wanted.get(key, {}).get(role, []))
            after = set(have.get(key, {}).get(role, []))
            if before - after:
                note = " (missing on the target)" if missing else ""
                out.append(AppDifference(
                    "grants", label,
                    f"{role} lost {', '.join(sorted(before - after))} on {label}{note}", "fail"))
            if after - before:
                out.append(AppDifference(
                    "grants", label, f"{role} holds {', '.join(sorted(after - before))} on "
                    f"{label}, which the backup did not grant", "warning"))
    return out


def _rls(expected: dict[str, Any], actual: dict[str, Any],
         schemas: set[str] | None) -> list[AppDifference]:
    out = []
    have = _rls_map(actual)
    complete = "objects" in actual  # every table is listed, not only those with RLS
    for t in _rls_map(expected).values():
        if not _in(schemas, t["schema"]):
            continue
        label = f"{t['schema']}.{t['name']}"
        now = have.get((t["schema"], t["name"]))
        if now is None and complete:
            out.append(AppDifference("rls", label, f"{label} is missing (it had RLS "
                                     f"{'enabled' if t['enabled'] else 'off'} and "
                                     f"{len(t['policies'])} policies)", "fail"))
            continue
        now = now or {"enabled": False, "forced": False, "policies": []}
        if t["enabled"] and not now["enabled"]:
            out.append(AppDifference("rls", label, f"row level security is disabled on "
                                     f"{label} (enabled in the backup)", "fail"))
        if t["forced"] and not now["forced"]:
            out.append(AppDifference("rls", label, f"row level security is no longer forced "
                                     f"on {label}", "fail"))
        if now["enabled"] and not t["enabled"]:
            out.append(AppDifference("rls", label, f"row level security is enabled on {label}, "
                                     "which the backup did not have", "warning"))
        for p in sorted(set(t["policies"]) - set(now["policies"])):
            out.append(AppDifference("policies", label, f'policy "{p}" on {label} is missing',
                                     "fail"))
        for p in sorted(set(now["policies"]) - set(t["policies"])):
            out.append(AppDifference("policies", label, f'policy "{p}" on {label} is not in '
                                     "the backup", "warning"))
    known = set(_rls_map(expected))
    for (schema, name), now in sorted(have.items()):
        if (schema, name) in known or not _in(schemas, schema) or not now["enabled"]:
            continue
        out.append(AppDifference("rls", f"{schema}.{name}", f"row level security is enabled "
                                 f"on {schema}.{name}, which the backup did not have",
                                 "warning"))
    return out


def _sequences(expected: dict[str, Any], actual: dict[str, Any],
               schemas: set[str] | None) -> list[AppDifference]:
    if "sequence_state" not in actual:
        return []
    out = []
    state = {(s["schema"], s["name"]): s for s in actual["sequence_state"]}
    for s in sequence_list(expected):
        if not _in(schemas, s["table_schema"]):
            continue
        label = f"{s['schema']}.{s['name']}"
        column = f"{s['table_schema']}.{s['table']}.{s['column']}"
        now = state.get((s["schema"], s["name"]))
        if now is None:
            continue
        if "error" in now:
            out.append(AppDifference("sequences", label, f"{label} (for {column}) could not be "
                                     f"checked: {now['error']}", "warning"))
        elif "last_value" not in now:
            out.append(AppDifference("sequences", label, f"sequence {label} (for {column}) is "
                                     "missing", "fail"))
        elif isinstance(now["last_value"], int) and isinstance(now.get("column_value"), int):
            inc, last, top = int(s["increment"]), now["last_value"], now["column_value"]
            following = last + inc if now["is_called"] else last
            if (following <= top) if inc > 0 else (following >= top):
                out.append(AppDifference(
                    "sequences", label,
                    f"{label} would hand out {following} next but {column} already reaches "
                    f"{top}: inserts would hit duplicate keys (SELECT setval('{label}', "
                    f"{top}))", "fail"))
    return out


def _extensions(expected: dict[str, Any], actual: dict[str, Any]) -> list[AppDifference]:
    out = []
    have = {e["name"]: e for e in actual["extensions"]}
    avail = actual.get("extension_availability")
    superuser = bool(actual.get("superuser"))
    for e in expected.get("extensions", []):
        name = e["name"]
        now = have.get(name)
        if now is not None:
            if now["schema"] != e["schema"]:
                out.append(AppDifference("extensions", name, f"extension {name} is in schema "
                                         f"{now['schema']}, the backup had it in {e['schema']}",
                                         "warning"))
            continue
        if avail is not None and name not in avail:
            out.append(AppDifference("extensions", name, f"extension {name} is missing: it is "
                                     "not installed on the target's server (not in "
                                     "pg_available_extensions)", "warning"))
        elif superuser or (avail is not None and avail[name]["trusted"]):
            out.append(AppDifference("extensions", name, f"extension {name} is missing (the "
                                     f"target could create it: CREATE EXTENSION \"{name}\" "
                                     f"SCHEMA {e['schema']})", "fail"))
        else:
            out.append(AppDifference("extensions", name, f"extension {name} is missing: the "
                                     "target's user is not a superuser and it is not a trusted "
                                     "extension (the provider or a superuser must create it)",
                                     "warning"))
    return out


def _publications(expected: dict[str, Any], actual: dict[str, Any],
                  schemas: set[str] | None) -> list[AppDifference]:
    out = []
    have = {p["name"]: p for p in actual["publications"]}
    superuser = bool(actual.get("superuser"))
    for p in expected.get("publications", []):
        name = p["name"]
        now = have.get(name)
        if now is None:
            if p["all_tables"] and not superuser:
                out.append(AppDifference("publications", name, f"publication {name} (FOR ALL "
                                         "TABLES) is missing: only a superuser may create it",
                                         "warning"))
            else:
                out.append(AppDifference("publications", name, f"publication {name} is "
                                         "missing", "fail"))
            continue
        if p["all_tables"] and not now["all_tables"]:
            out.append(AppDifference("publications", name, f"publication {name} is no longer "
                                     "FOR ALL TABLES", "fail"))
        tables = {tuple(t) for t in now["tables"]}
        for schema, table in p["tables"]:
            if _in(schemas, schema) and (schema, table) not in tables:
                out.append(AppDifference("publications", name, f"publication {name} lost "
                                         f"{schema}.{table}", "fail"))
        for schema in p.get("schemas", []):
            if _in(schemas, schema) and schema not in now.get("schemas", []):
                out.append(AppDifference("publications", name, f"publication {name} lost "
                                         f"TABLES IN SCHEMA {schema}", "fail"))
    return out


def _event_triggers(expected: dict[str, Any], actual: dict[str, Any]) -> list[AppDifference]:
    out = []
    have = {t["name"]: t for t in actual["event_triggers"]}
    superuser = bool(actual.get("superuser"))
    for t in expected.get("event_triggers", []):
        name = t["name"]
        now = have.get(name)
        if now is None:
            if superuser:
                out.append(AppDifference("event triggers", name, f"event trigger {name} "
                                         f"({t['event']}) is missing", "fail"))
            else:
                out.append(AppDifference(
                    "event triggers", name, f"event trigger {name} ({t['event']}) is missing: "
                    "only a superuser may create one and the target's user is not one (on "
                    "Supabase they belong to supabase_admin)", "warning"))
        elif t["enabled"] and not now["enabled"]:
            out.append(AppDifference("event triggers", name, f"event trigger {name} is "
                                     "disabled", "warning"))
    return out


def verify_app_state(meta: dict[str, Any], conn: Conn,
                     schemas: set[str] | None = None) -> list[AppDifference] | None:
    """The comparison for a verification: None when the backup recorded no application state
    (older metadata); a failure to read the target becomes one warning."""
    expected = meta.get("app_state")
    if not isinstance(expected, dict):
        return None
    try:
        return compare(expected, conn, schemas)
    except psycopg.Error as exc:
        return [AppDifference("app state", "target", "the application state could not be "
                              f"read from the target: {str(exc).strip().splitlines()[0]}",
                              "warning")]
