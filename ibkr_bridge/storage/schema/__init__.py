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

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TypeAlias

import asyncpg
from attrs import frozen

from ibkr_bridge.core.errors import SchemaError
from ibkr_bridge.storage.schema._checks import (
    Finding,
    check_bridge_schema,
    inspect_bridge_schema,
    legacy_underlying_rows,
)
from ibkr_bridge.storage.schema._tables import (
    ACCEPTED_TYPES,
    DDL,
    EVENTS_COLUMNS,
    EVENTS_TABLE,
    GREEKS_COLUMNS,
    GREEKS_TABLE,
    REQUIRED,
    SCHEMA_LOCK_ID,
    TABLES,
    UNDERLYING_COLUMNS,
    UNDERLYING_TABLE,
    Column,
    table_ddl,
    unique_key_ddl,
)

__all__ = [
    "ACCEPTED_TYPES",
    "DDL",
    "EVENTS_COLUMNS",
    "EVENTS_TABLE",
    "GREEKS_COLUMNS",
    "GREEKS_TABLE",
    "REQUIRED",
    "SCHEMA_LOCK_ID",
    "TABLES",
    "UNDERLYING_COLUMNS",
    "UNDERLYING_TABLE",
    "Column",
    "Executor",
    "Finding",
    "Plan",
    "apply_bridge_schema",
    "check_bridge_schema",
    "describe",
    "ensure_bridge_schema",
    "inspect_bridge_schema",
    "legacy_underlying_rows",
    "plan_bridge_schema",
    "table_ddl",
    "unique_key_ddl",
]

Executor: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


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


@contextlib.asynccontextmanager
async def _locked(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction holding the schema lock: one bootstrap or upgrade at a time."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_ID)
        yield


def _every(found: Mapping[str, Sequence[Finding]]) -> list[Finding]:
    return [f for items in found.values() for f in items]


async def _ensure(conn: asyncpg.Connection) -> None:
    async with _locked(conn):
        found = await inspect_bridge_schema(conn)
        findings = _every(found)
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
    every = _every(found)
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
    async with _locked(conn):
        plan = await plan_bridge_schema(conn)
        if plan.blocked:
            raise SchemaError(describe([*plan.blocked, *plan.upgrade]))
        for finding in plan.upgrade:
            for statement in finding.fix:
                await conn.execute(statement)
        await conn.execute(DDL)
        left = _every(await inspect_bridge_schema(conn))
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
