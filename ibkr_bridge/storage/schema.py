"""The bridge's three tables: created if absent, checked if present, upgraded on request.

The database is shared with the trader's dashboards and workers, so the bridge touches
``portfolio_greeks``, ``underlying_greeks`` and ``api_logs`` and nothing else, and never
drops or rewrites data. ``portfolio_greeks`` holds only the ``PORTFOLIO`` row of each tick
(the spec's contract: the latest row of that table is the portfolio); the per-underlying
rows of a book with several underlyings go to ``underlying_greeks``, same columns.

A table that exists is checked column by column, names *and* types (a table with the right
names and the wrong types would accept the bridge's start and then refuse every row as bad
data). What is wrong falls in two kinds:

* additive (a missing column, the missing unique key on ``bridge_key``): ``ibkr-bridge schema
  --apply`` (:func:`apply_bridge_schema`) adds them, backfilling ``bridge_key`` for the rows
  already there; this is how a table shaped like the earlier spec-005 bridge's is upgraded;
* a decision for a human (a wrong type, a NOT NULL the bridge cannot satisfy): refused with
  :class:`~ibkr_bridge.core.errors.SchemaError` naming the exact ``ALTER TABLE`` to run.

The service itself (:func:`ensure_bridge_schema`) only creates what is absent; it refuses a
table needing either kind of change, with the statements in the error.

Types accepted for each column (:data:`ACCEPTED_TYPES`): the bridge's own, plus a few that
store every value the bridge writes exactly: ``numeric`` without precision for ``double
precision`` (it holds a double's exact binary value), unbounded ``varchar`` for ``text``,
``bigint`` for ``integer``, ``json`` for ``jsonb``. Refused: ``real`` (rounds), ``numeric(p,
s)`` (rounds, overflows), ``varchar(n)`` (refuses long values), ``timestamp without time
zone`` (drops the offset; its ALTER needs the zone the old rows were written in).

``bridge_key`` carries each record's idempotency key; its unique index turns a replayed
row (from the buffer, or a retried commit whose reply was lost) into a no-op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias

import asyncpg
from attrs import frozen

from ibkr_bridge.core.errors import SchemaError

# Two processes bootstrapping at once would race on CREATE TABLE IF NOT EXISTS (it is not
# atomic against concurrent creators); a transaction-scoped advisory lock serialises them.
SCHEMA_LOCK_ID: Final = 0x1BB2_B41D

GREEKS_TABLE: Final = "portfolio_greeks"
UNDERLYING_TABLE: Final = "underlying_greeks"
EVENTS_TABLE: Final = "api_logs"
TABLES: Final = (GREEKS_TABLE, UNDERLYING_TABLE, EVENTS_TABLE)


@frozen
class Column:
    """One column the bridge writes: its type, and how a new table declares it."""

    type: str
    not_null: bool = False  # in a table the bridge creates
    default: str | None = None
    check: str | None = None
    writes_null: bool = False  # the bridge writes NULL here: a NOT NULL would refuse rows

    def ddl(self) -> str:
        parts = [self.type]
        if self.not_null:
            parts.append("NOT NULL")
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        if self.check is not None:
            parts.append(self.check)
        return " ".join(parts)

    def added(self) -> str:
        """As added to a table with rows: NOT NULL only where a default fills the old rows."""
        if self.default is None:
            return self.type
        return f"{self.type}{' NOT NULL' if self.not_null else ''} DEFAULT {self.default}"


# One line per column; a new nullable column is one more line here (and in store.py).
GREEKS_COLUMNS: Final[Mapping[str, Column]] = {
    "timestamp": Column("timestamptz", not_null=True),
    "contract": Column("text", not_null=True, default="'PORTFOLIO'"),
    "delta": Column("double precision", writes_null=True),
    "gamma": Column("double precision", writes_null=True),
    "vega": Column("double precision", writes_null=True),
    "theta": Column("double precision", writes_null=True),
    "underlying_price": Column("double precision", writes_null=True),
    "dollar_delta": Column("double precision", writes_null=True),
    "account": Column("text"),
    "api_mode": Column("text"),
    "legs": Column("integer"),
    "legs_missing": Column("integer"),
    "bridge_key": Column("text", not_null=True),
}
EVENTS_COLUMNS: Final[Mapping[str, Column]] = {
    "timestamp": Column("timestamptz", not_null=True),
    "api_mode": Column("text", not_null=True),
    "event": Column("text", not_null=True),
    "status": Column("text", not_null=True, check="CHECK (status IN ('info', 'warning', 'error'))"),
    "message": Column("text", not_null=True),
    "machine": Column("text", writes_null=True),
    "source_state": Column("text", writes_null=True),
    "dest_state": Column("text", writes_null=True),
    "detail": Column("jsonb", not_null=True, default="'{}'::jsonb"),
    "bridge_key": Column("text", not_null=True),
}

# The same columns; a per-underlying row always names its underlying (no default).
UNDERLYING_COLUMNS: Final[Mapping[str, Column]] = {
    **GREEKS_COLUMNS,
    "contract": Column("text", not_null=True),
}

REQUIRED: Final[Mapping[str, Mapping[str, Column]]] = {
    GREEKS_TABLE: GREEKS_COLUMNS,
    UNDERLYING_TABLE: UNDERLYING_COLUMNS,
    EVENTS_TABLE: EVENTS_COLUMNS,
}

# bridge type -> format_type() spellings that store every value the bridge writes exactly
ACCEPTED_TYPES: Final[Mapping[str, frozenset[str]]] = {
    "timestamptz": frozenset({"timestamp with time zone"}),
    "double precision": frozenset({"double precision", "numeric"}),
    "text": frozenset({"text", "character varying"}),
    "integer": frozenset({"integer", "bigint"}),
    "jsonb": frozenset({"jsonb", "json"}),
}

# Extra indexes for readers: the latest rows by time, and per underlying.
_INDEXES: Final[Mapping[str, Sequence[str]]] = {
    GREEKS_TABLE: ("timestamp",),
    UNDERLYING_TABLE: ("timestamp", "contract, timestamp"),
    EVENTS_TABLE: ("timestamp",),
}


def unique_key_ddl(table: str) -> str:
    return f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_bridge_key_uq ON {table} (bridge_key);"


def table_ddl(table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` and the indexes of one bridge table."""
    columns = REQUIRED[table]
    width = max(len(name) for name in [*columns, "inserted_at"]) + 1
    body = [f"    {'id':<{width}}bigserial PRIMARY KEY"]
    body += [f"    {name:<{width}}{column.ddl()}" for name, column in columns.items()]
    body.append(f"    {'inserted_at':<{width}}timestamptz NOT NULL DEFAULT now()")
    lines = [f"CREATE TABLE IF NOT EXISTS {table} (", ",\n".join(body), ");", unique_key_ddl(table)]
    for cols in _INDEXES[table]:
        name = "_".join(c.strip() for c in cols.split(","))
        lines.append(f"CREATE INDEX IF NOT EXISTS {table}_{name}_idx ON {table} ({cols});")
    return "\n".join(lines)


DDL: Final = "\n\n".join(table_ddl(table) for table in TABLES)

Executor: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@frozen
class Finding:
    """One thing wrong with an existing table, and the statements that fix it."""

    table: str
    problem: str
    fix: tuple[str, ...]
    additive: bool  # ``schema --apply`` may run ``fix``: it only adds, keeping every row


@frozen
class _Attr:
    type: str  # format_type(): 'double precision', 'character varying(50)', ...
    not_null: bool
    filled: bool  # has a default, is an identity or generated column


async def inspect_bridge_schema(conn: asyncpg.Connection) -> dict[str, list[Finding]]:
    """``{table: findings}`` for each bridge table that exists (``[]`` when it is fine).

    A table absent from the result does not exist: it is one to create.
    """
    # One round trip: the bridge runs this at every start and every database recovery.
    rows = await conn.fetch(
        """
        SELECT c.relname AS table, c.relkind::text AS kind, a.attname AS column,
               format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
               (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS filled,
               EXISTS (
                   SELECT 1 FROM pg_index i
                   WHERE i.indrelid = c.oid AND i.indisunique AND i.indnatts = 1
                     AND i.indkey[0] = a.attnum AND i.indpred IS NULL
               ) AS unique_key
        FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.oid = ANY(ARRAY[to_regclass($1), to_regclass($2), to_regclass($3)])
        ORDER BY c.relname, a.attnum
        """,
        *TABLES,
    )
    present: dict[str, dict[str, _Attr]] = {}
    keyed: set[str] = set()
    not_tables: dict[str, str] = {}
    for row in rows:
        if row["kind"] not in ("r", "p", "f"):  # COPY cannot write into a view
            not_tables[row["table"]] = _KINDS.get(row["kind"], f"relkind {row['kind']}")
        attrs = present.setdefault(row["table"], {})
        attrs[row["column"]] = _Attr(row["type"], row["not_null"], row["filled"])
        if row["column"] == "bridge_key" and row["unique_key"]:
            keyed.add(row["table"])
    found: dict[str, list[Finding]] = {}
    for table in TABLES:
        if table in not_tables:
            problem = f"is a {not_tables[table]}, not a table: the bridge cannot write to it"
            found[table] = [Finding(table, problem, (), additive=False)]
        elif table in present:
            found[table] = _findings(table, present[table])
            if "bridge_key" in present[table] and table not in keyed:
                found[table].append(_no_unique_key(table))
    return found


_KINDS: Final = {"v": "view", "m": "materialized view"}


def _findings(table: str, attrs: Mapping[str, _Attr]) -> list[Finding]:
    required = REQUIRED[table]
    out: list[Finding] = []
    for name, column in required.items():
        attr = attrs.get(name)
        if attr is None:
            fix = [f"ALTER TABLE {table} ADD COLUMN {name} {column.added()};"]
            if name == "bridge_key":
                # Rows already there get a key of their own (ctid is unique among them),
                # in a form no key the bridge makes (hex) can collide with.
                fix.append(
                    f"UPDATE {table} SET bridge_key = 'legacy:' || ctid::text "
                    "WHERE bridge_key IS NULL;"
                )
            out.append(Finding(table, f"missing column {name}", tuple(fix), additive=True))
            continue
        if attr.type not in ACCEPTED_TYPES[column.type]:
            out.append(
                Finding(
                    table,
                    f"column {name} is {attr.type}, needs {column.type}",
                    (_alter_type(table, name, column.type, attr.type),),
                    additive=False,
                )
            )
        if attr.not_null and column.writes_null:
            out.append(
                Finding(
                    table,
                    f"column {name} is NOT NULL, but the bridge writes NULL when it is unknown",
                    (f"ALTER TABLE {table} ALTER COLUMN {name} DROP NOT NULL;",),
                    additive=False,
                )
            )
    for name, attr in attrs.items():
        if name not in required and attr.not_null and not attr.filled:
            out.append(
                Finding(
                    table,
                    f"column {name} (not the bridge's) is NOT NULL without a default",
                    (f"ALTER TABLE {table} ALTER COLUMN {name} DROP NOT NULL;",),
                    additive=False,
                )
            )
    if "bridge_key" not in attrs:
        out.append(_no_unique_key(table))
    return out


def _no_unique_key(table: str) -> Finding:
    return Finding(table, "no unique index on bridge_key", (unique_key_ddl(table),), True)


def _alter_type(table: str, column: str, wanted: str, current: str) -> str:
    using = f'"{column}"::{wanted}'
    if current == "timestamp without time zone":
        # Which zone the old rows meant is the owner's call; UTC is the usual one.
        using = f"\"{column}\" AT TIME ZONE 'UTC'"
    return f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {wanted} USING {using};"


async def check_bridge_schema(
    conn: asyncpg.Connection, *, missing_tables_ok: bool = False
) -> dict[str, list[str]]:
    """What is wrong with the bridge tables: ``{table: [problem, ...]}`` (empty when fine)."""
    found = await inspect_bridge_schema(conn)
    problems: dict[str, list[str]] = {}
    for table in TABLES:
        if table not in found:
            if not missing_tables_ok:
                problems[table] = ["table is missing"]
        elif found[table]:
            problems[table] = [f.problem for f in found[table]]
    return problems


async def legacy_underlying_rows(conn: asyncpg.Connection) -> int:
    """Per-underlying rows an earlier version wrote into ``portfolio_greeks`` (0 if none)."""
    has_contract = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1)"
        " AND attname = 'contract' AND NOT attisdropped)",
        GREEKS_TABLE,
    )
    if not has_contract:
        return 0
    count = await conn.fetchval(
        f"SELECT count(*) FROM {GREEKS_TABLE} WHERE contract <> 'PORTFOLIO'"
    )
    return int(count)


async def ensure_bridge_schema(db: Executor) -> None:
    """Create the tables that are absent; check those present. Safe to call concurrently.

    Raises :class:`~ibkr_bridge.core.errors.SchemaError` naming every problem of a table that
    exists (missing columns, wrong types, a missing unique key on ``bridge_key``) and the
    statements that fix it, without changing anything.
    """
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            await _ensure(conn)
    else:
        await _ensure(db)


async def _ensure(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_ID)
        found = await inspect_bridge_schema(conn)
        findings = [f for items in found.values() for f in items]
        if findings:
            raise SchemaError(describe(findings))
        absent = [table_ddl(table) for table in TABLES if table not in found]
        if absent:
            await conn.execute("\n".join(absent))


@frozen
class Plan:
    """What :func:`apply_bridge_schema` does: tables to create and statements to run."""

    create: tuple[str, ...]  # tables absent
    upgrade: tuple[Finding, ...]  # additive findings, run by --apply
    blocked: tuple[Finding, ...]  # for a human: --apply refuses while any is left

    @property
    def empty(self) -> bool:
        return not (self.create or self.upgrade or self.blocked)


async def plan_bridge_schema(conn: asyncpg.Connection) -> Plan:
    """What ``schema --apply`` would do now (it changes nothing)."""
    found = await inspect_bridge_schema(conn)
    every = [f for items in found.values() for f in items]
    return Plan(
        create=tuple(t for t in TABLES if t not in found),
        upgrade=tuple(f for f in every if f.additive),
        blocked=tuple(f for f in every if not f.additive),
    )


async def apply_bridge_schema(conn: asyncpg.Connection) -> Plan:
    """Create what is absent and add what is missing, in one transaction; the plan it ran.

    Only additive statements run (new columns, the backfilled ``bridge_key``, its unique
    index): every existing row is kept. A problem needing a human (a wrong type, a NOT
    NULL) raises SchemaError before anything changes. Running it again is a no-op.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_ID)
        plan = await plan_bridge_schema(conn)
        if plan.blocked:
            raise SchemaError(describe([*plan.blocked, *plan.upgrade]))
        for finding in plan.upgrade:
            for statement in finding.fix:
                await conn.execute(statement)
        await conn.execute(DDL)
        left = [f for items in (await inspect_bridge_schema(conn)).values() for f in items]
        if left:  # the plan did not converge: undo it all rather than leave a half upgrade
            raise SchemaError(describe(left))
    return plan


def describe(findings: Sequence[Finding]) -> str:
    """A SchemaError's text: every problem, then the statements, additive ones marked."""
    lines = ["the bridge's tables exist but cannot be written safely (nothing was changed):"]
    lines += [f"  {f.table}: {f.problem}" for f in findings]
    manual = [stmt for f in findings if not f.additive for stmt in f.fix]
    additive = [stmt for f in findings if f.additive for stmt in f.fix]
    if manual:
        lines.append("review and run as the tables' owner (a change of type or constraint):")
        lines += [f"  {stmt}" for stmt in manual]
    if additive:
        lines.append(
            "`ibkr-bridge schema --apply` adds what is missing, keeping every row"
            + (" (once the above is done):" if manual else ":")
        )
        lines += [f"  {stmt}" for stmt in additive]
    return "\n".join(lines)
