"""Checking existing bridge tables: every finding names its problem and the statements
that fix it, and whether ``schema --apply`` may run them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import asyncpg
from attrs import frozen

from ibkr_bridge.storage.schema._tables import (
    ACCEPTED_TYPES,
    GREEKS_TABLE,
    REQUIRED,
    TABLES,
    unique_key_ddl,
)


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
