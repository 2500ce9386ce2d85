"""What a restore may restore into a kind of target, and what it must leave as the target has it.

Kinds of target (`detect_kind`):
- `superuser`: the operator's role is a superuser; everything in the archive is restored.
- `supabase`: a hosted Supabase project as its `postgres` role, which is not a superuser
  there (the cluster has `supabase_admin`). Supabase manages the schemas in `MANAGED_SCHEMAS`
  and the extensions; the application's schemas (public and the operator's own) are restored.
- `restricted`: any other non-superuser role; everything the role may create.

`plan_entries` lists the archive's entries to leave out, each with its reason, for a
`--use-list` file. `names_of` reads each entry's schema, name and owner from the archive's
table of contents, where names with spaces (a schema `Ops Data`) are told apart with the
schema and role names the backup recorded. `OutsideDependents` keeps what lives outside the
restored schemas but hangs on them (Supabase's sign-up trigger on `auth.users` calling a
function in `public`): emptying the schemas would drop it, so its definition is read first and
it is recreated after pg_restore if the archive did not bring it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tui.core.archive import Toc, TocEntry

MANAGED_SCHEMAS = frozenset({
    "auth", "storage", "realtime", "extensions", "graphql", "graphql_public", "vault",
    "pgsodium", "pgsodium_masks", "cron", "supabase_functions", "supabase_migrations", "net",
    "pgbouncer", "_realtime", "_analytics", "pg_net",
})


@dataclass(frozen=True)
class TargetKind:
    kind: str  # superuser | supabase | restricted
    user: str
    # Roles the operator may act for (ALTER DEFAULT PRIVILEGES FOR ROLE needs membership).
    member_of: frozenset[str] = frozenset()

    @property
    def superuser(self) -> bool:
        return self.kind == "superuser"

    def describe(self) -> str:
        return {"superuser": f"{self.user} is a superuser",
                "supabase": f"a Supabase project ({self.user} is not a superuser there)",
                "restricted": f"{self.user} is not a superuser"}[self.kind]


def detect_kind(conn: psycopg.Connection[Any]) -> TargetKind:
    row = conn.execute(
        "SELECT current_user, rolsuper,"
        " EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'supabase_admin'),"
        " ARRAY(SELECT rolname::text FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER'))"
        " FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row is not None
    user, superuser, supabase, member_of = str(row[0]), bool(row[1]), bool(row[2]), row[3]
    kind = "superuser" if superuser else "supabase" if supabase else "restricted"
    return TargetKind(kind, user, frozenset(str(r) for r in member_of or []))


@dataclass(frozen=True)
class EntryName:
    schema: str  # "-" for entries outside any schema
    tag: str
    owner: str


def names_of(toc: Toc, schemas: Iterable[str], roles: Iterable[str]) -> dict[int, EntryName]:
    """Each entry's schema, tag and owner. pg_restore prints them separated by single spaces,
    unquoted, so a name with a space is read against the names known: the schemas and roles the
    backup recorded, and the archive's own SCHEMA entries."""
    role_list = sorted({str(r) for r in roles}, key=len, reverse=True)
    schema_set = {str(s) for s in schemas} | {"public"}
    for e in toc.entries:  # SCHEMA entries name a schema: "SCHEMA - Ops Data postgres"
        if e.desc == "SCHEMA":
            schema_set.add(_split(e, [], role_list).tag)
    schema_list = sorted(schema_set, key=len, reverse=True)
    return {e.dump_id: _split(e, schema_list, role_list) for e in toc.entries}


def _split(entry: TocEntry, schemas: list[str], roles: list[str]) -> EntryName:
    """`schemas` and `roles` longest first, so "Ops Data" wins over "Ops"."""
    rest = entry.text[len(entry.desc):]
    rest = rest[1:] if rest.startswith(" ") else rest
    if rest.startswith("- ") or rest == "-":
        schema, rest = "-", rest[2:]
    else:
        schema = next((s for s in schemas if rest == s or rest.startswith(s + " ")),
                      rest.split(" ", 1)[0])
        rest = rest[len(schema) + 1:]
    if rest.endswith(" "):  # no owner
        return EntryName(schema, rest[:-1], "")
    owner = next((r for r in roles if rest.endswith(" " + r)), None)
    if owner is None:
        tag, _, owner = rest.rpartition(" ")
        return EntryName(schema, tag or owner, owner if tag else "")
    return EntryName(schema, rest[:-len(owner) - 1], owner)


@dataclass(frozen=True)
class LeftOut:
    entry: TocEntry
    reason: str

    def describe(self) -> str:
        return f"{self.entry.text.strip()}: {self.reason}"


def _managed(schema: str, entry: TocEntry, name: EntryName) -> str | None:
    """The managed schema an entry belongs to, if any."""
    if schema in MANAGED_SCHEMAS:
        return schema
    if entry.desc == "SCHEMA" and name.tag in MANAGED_SCHEMAS:
        return name.tag
    if entry.desc in ("ACL", "COMMENT") and name.tag.startswith("SCHEMA "):
        target = name.tag[len("SCHEMA "):]
        return target if target in MANAGED_SCHEMAS else None
    return None


@dataclass(frozen=True)
class Plan:
    left_out: list[LeftOut]
    # Schemas the target keeps as they are (never emptied), though an entry may be restored
    # into one (a trigger that hangs on a restored function).
    keep_schemas: frozenset[str]


def plan_entries(toc: Toc, names: dict[int, EntryName], kind: TargetKind, *,
                 app_schemas_only: bool) -> Plan:
    """The entries to leave out, each with why, and the schemas the target keeps."""
    managed_too = kind.kind == "supabase" or app_schemas_only
    left: list[LeftOut] = []
    left_ids: set[int] = set()
    for e in toc.entries:
        name = names[e.dump_id]
        reason = None
        extension_comment = e.desc == "COMMENT" and name.tag.startswith("EXTENSION ")
        if managed_too and (managed := _managed(name.schema, e, name)) is not None:
            reason = f"schema {managed} is managed by Supabase: the target keeps its own"
        elif managed_too and (e.desc == "EXTENSION" or extension_comment):
            reason = "extensions are the target's own (Supabase installs and updates them)"
        elif not kind.superuser and e.desc == "EVENT TRIGGER":
            reason = "only a superuser creates event triggers; the target keeps its own"
        elif not kind.superuser and extension_comment:
            reason = "a comment on an extension belongs to the extension's owner"
        elif (not kind.superuser and e.desc == "DEFAULT ACL" and name.owner
              and name.owner not in kind.member_of):
            reason = (f"default privileges of role {name.owner}, which {kind.user} may not act "
                      "for; the target keeps its own")
        if reason is not None:
            left.append(LeftOut(e, reason))
            left_ids.add(e.dump_id)
    # A trigger on a managed table that calls the application's function (Supabase's sign-up
    # trigger on auth.users) goes with that function when the schemas are emptied: restore it.
    descs = {e.dump_id: e.desc for e in toc.entries}
    kept = [item for item in left
            if not (item.entry.desc == "TRIGGER"
                    and any(d not in left_ids and descs.get(d) == "FUNCTION"
                            for d in toc.deps.get(item.entry.dump_id, [])))]
    return Plan(kept, MANAGED_SCHEMAS if managed_too else frozenset())


def deferred_foreign_keys(toc: Toc, names: dict[int, EntryName], skip: set[int]) -> set[int]:
    """Foreign keys of partitioned tables, to be added once all data is in.

    pg_dump makes such a key wait for its parent table, not for the partitions' data, so a
    parallel pg_restore may add it while partitions still load: every row then runs the key's
    check as the referenced table's owner, which fails where that owner's grants come only in
    pg_restore's last pass (a fresh cluster: `permission denied for schema auth`). A
    partitioned table is a TABLE with no TABLE DATA entry of its own."""
    with_data = {(names[e.dump_id].schema, names[e.dump_id].tag) for e in toc.entries
                 if e.desc == "TABLE DATA"}
    data_less = {e.dump_id for e in toc.entries if e.desc == "TABLE"
                 and (names[e.dump_id].schema, names[e.dump_id].tag) not in with_data}
    return {e.dump_id for e in toc.entries
            if e.desc == "FK CONSTRAINT" and e.dump_id not in skip
            and any(d in data_less for d in toc.deps.get(e.dump_id, []))}


# -- what lives outside the restored schemas but hangs on them ----------------------------------

_DOOMED = """
WITH RECURSIVE doomed(classid, objid, objsubid) AS (
    SELECT 'pg_namespace'::regclass, oid, 0 FROM pg_namespace WHERE nspname = ANY(%(schemas)s)
  UNION
    SELECT d.classid, d.objid, d.objsubid FROM pg_depend d
    JOIN doomed ON d.refclassid = doomed.classid AND d.refobjid = doomed.objid
    WHERE d.deptype IN ('n', 'a')
)
"""

_TRIGGERS = _DOOMED + """
SELECT t.tgname, n.nspname, c.relname, pg_get_triggerdef(t.oid)
FROM doomed JOIN pg_trigger t ON doomed.classid = 'pg_trigger'::regclass AND doomed.objid = t.oid
JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND n.nspname <> ALL(%(schemas)s)
"""

_OTHERS = _DOOMED + """
SELECT DISTINCT pg_describe_object(doomed.classid, doomed.objid, doomed.objsubid)
FROM doomed
LEFT JOIN pg_class c ON doomed.classid = 'pg_class'::regclass AND c.oid = doomed.objid
LEFT JOIN pg_namespace cn ON cn.oid = c.relnamespace
LEFT JOIN pg_proc p ON doomed.classid = 'pg_proc'::regclass AND p.oid = doomed.objid
LEFT JOIN pg_namespace pn ON pn.oid = p.pronamespace
LEFT JOIN pg_policy pol ON doomed.classid = 'pg_policy'::regclass AND pol.oid = doomed.objid
LEFT JOIN pg_class polc ON polc.oid = pol.polrelid
LEFT JOIN pg_namespace poln ON poln.oid = polc.relnamespace
LEFT JOIN pg_constraint con ON doomed.classid = 'pg_constraint'::regclass AND con.oid = doomed.objid
LEFT JOIN pg_class conc ON conc.oid = con.conrelid
LEFT JOIN pg_namespace conn ON conn.oid = conc.relnamespace
LEFT JOIN pg_rewrite rw ON doomed.classid = 'pg_rewrite'::regclass AND rw.oid = doomed.objid
LEFT JOIN pg_class rwc ON rwc.oid = rw.ev_class
LEFT JOIN pg_namespace rwn ON rwn.oid = rwc.relnamespace
WHERE coalesce(cn.nspname, pn.nspname, poln.nspname, conn.nspname, rwn.nspname)
      <> ALL(%(schemas)s)
  AND doomed.classid IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_policy'::regclass,
                         'pg_constraint'::regclass, 'pg_rewrite'::regclass)
"""


@dataclass(frozen=True)
class OutsideTrigger:
    name: str
    schema: str
    table: str
    definition: str

    def describe(self) -> str:
        return f"trigger {self.name} on {self.schema}.{self.table}"


@dataclass
class OutsideDependents:
    """Objects outside the schemas being emptied that the emptying would drop."""

    triggers: list[OutsideTrigger] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # described, not recreated
    recreated: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, conn: psycopg.Connection[Any], schemas: list[str]) -> OutsideDependents:
        params = {"schemas": schemas}
        triggers = [OutsideTrigger(str(r[0]), str(r[1]), str(r[2]), str(r[3]))
                    for r in conn.execute(_TRIGGERS, params).fetchall()]
        described = {t.describe() for t in triggers}
        others = [str(r[0]) for r in conn.execute(_OTHERS, params).fetchall()
                  if not str(r[0]).startswith("trigger ")]
        return cls(triggers, sorted(o for o in others if o not in described))

    def restore(self, conn: psycopg.Connection[Any]) -> None:
        """After pg_restore: recreate each trigger the archive did not bring back."""
        from psycopg import sql

        for t in self.triggers:
            exists = conn.execute(
                "SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = %s::regclass",
                [t.name, sql.Identifier(t.schema, t.table).as_string(conn)]).fetchone()
            if exists:
                continue
            try:
                conn.execute(t.definition)  # pg_get_triggerdef's text, from the target itself
                self.recreated.append(t.describe())
            except psycopg.Error as exc:
                self.gone.append(f"{t.describe()} ({exc.diag.message_primary or exc})")
        self.gone.extend(self.others)


# -- data of managed tables, into a project that has none yet -------------------------------------


@dataclass
class ManagedData:
    """Data of tables in the managed schemas that a Supabase restore does load: only into a
    table that is empty on the target (a fresh project, as in disaster recovery), with the same
    columns as in the backup, which the operator may insert into, with no INSERT trigger to
    fire, whose foreign keys point only at tables loaded with it, and whose own sequences the
    operator may set. A table with rows is never touched: its rows are live (sign-ups since the
    backup), and replacing them is no restore's default. `entries` are in the order to load
    them (referenced tables first), each table's SEQUENCE SET entries after its data."""

    entries: list[TocEntry] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # table -> why its data is not loaded


_MANAGED_TARGET = """
SELECT n.nspname || '.' || c.relname,
       ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid
             AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       has_table_privilege(c.oid, 'INSERT'),
       EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
               AND t.tgenabled <> 'D' AND (t.tgtype & 4) <> 0),
       ARRAY(SELECT DISTINCT rn.nspname || '.' || rc.relname FROM pg_constraint k
             JOIN pg_class rc ON rc.oid = k.confrelid
             JOIN pg_namespace rn ON rn.oid = rc.relnamespace
             WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid <> c.oid),
       ARRAY(SELECT sn.nspname || '.' || s.relname FROM pg_depend d
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_namespace sn ON sn.oid = s.relnamespace
             WHERE d.refobjid = c.oid AND d.classid = 'pg_class'::regclass
               AND d.deptype IN ('a', 'i')),
       ARRAY(SELECT sn.nspname || '.' || s.relname FROM pg_depend d
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_namespace sn ON sn.oid = s.relnamespace
             WHERE d.refobjid = c.oid AND d.classid = 'pg_class'::regclass
               AND d.deptype IN ('a', 'i')
               AND CASE WHEN s.relkind = 'S' THEN NOT has_sequence_privilege(s.oid, 'UPDATE')
                   ELSE false END)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname || '.' || c.relname = ANY(%s)
"""


def managed_data(conn: psycopg.Connection[Any], toc: Toc, names: dict[int, EntryName],
                 left_out: list[LeftOut], meta: dict[str, Any]) -> ManagedData:
    from psycopg import sql

    plan = ManagedData()
    candidates = {f"{names[i.entry.dump_id].schema}.{names[i.entry.dump_id].tag}": i.entry
                  for i in left_out if i.entry.desc == "TABLE DATA"
                  and names[i.entry.dump_id].schema in MANAGED_SCHEMAS}
    if not candidates:
        return plan
    rows_in_backup = {f"{t['schema']}.{t['name']}": int(t["rows"]) for t in meta["tables"]}
    columns = meta.get("managed_columns") or {}
    target = {str(r[0]): r for r in conn.execute(_MANAGED_TARGET, [sorted(candidates)])}
    ok: dict[str, tuple[list[str], list[str]]] = {}  # table -> (references, sequences)
    for table in sorted(candidates):
        row = target.get(table)
        why = None
        if rows_in_backup.get(table, 0) == 0:
            continue  # nothing to load, nothing lost
        if table not in columns:
            why = "the backup does not record its columns (made by an older pgrunbook)"
        elif row is None:
            why = "the target has no such table"
        elif list(row[1]) != columns[table]:
            why = "its columns on the target differ from the backup's (another version)"
        elif not row[2]:
            why = "the operator may not insert into it"
        elif row[3]:
            why = "it has an INSERT trigger on the target"
        elif row[6]:
            why = f"the operator may not set its sequence {row[6][0]}"
        if why is None:
            schema, name = table.split(".", 1)
            has_rows = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM ONLY {}.{})").format(
                sql.Identifier(schema), sql.Identifier(name))).fetchone()
            if has_rows and has_rows[0]:
                why = "it has rows on the target (live data, never replaced by default)"
        if why is None:
            assert row is not None
            ok[table] = ([str(x) for x in row[4]], [str(x) for x in row[5]])
        else:
            plan.kept[table] = why
    changed = True
    while changed:  # a table whose foreign keys point at a table not loaded stays as it is
        changed = False
        for table, (refs, _seqs) in list(ok.items()):
            outside = [r for r in refs if r not in ok]
            if outside:
                plan.kept[table] = f"it references {outside[0]}, whose data is not loaded"
                del ok[table]
                changed = True
    ordered: list[str] = []
    while len(ordered) < len(ok):  # referenced tables first (foreign keys exist on the target)
        ready = sorted(t for t, (refs, _s) in ok.items()
                       if t not in ordered and all(r in ordered for r in refs))
        if not ready:  # a cycle: load the rest in name order, the keys then say what fails
            ready = sorted(t for t in ok if t not in ordered)
        ordered.extend(ready)
    sequence_sets = {f"{names[e.dump_id].schema}.{names[e.dump_id].tag}": e
                     for e in toc.entries if e.desc == "SEQUENCE SET"}
    for table in ordered:
        plan.entries.append(candidates[table])
        plan.entries.extend(sequence_sets[s] for s in ok[table][1] if s in sequence_sets)
        plan.tables.append(table)
    return plan
