from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ibkr_bridge.core.errors import SchemaError
from ibkr_bridge.core.records import ApiEvent, GreeksRow
from ibkr_bridge.storage.schema import (
    apply_bridge_schema,
    check_bridge_schema,
    ensure_bridge_schema,
    plan_bridge_schema,
)
from ibkr_bridge.storage.store import Store
from ibkr_bridge.testing import TestDatabase

ALL_TABLES = {"portfolio_greeks", "underlying_greeks", "api_logs"}


async def _tables(db: TestDatabase) -> set[str]:
    rows = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", db.schema
    )
    return {r["table_name"] for r in rows}


async def test_creates_the_tables_then_is_a_noop(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await ensure_bridge_schema(conn)
        assert await _tables(db) == ALL_TABLES
        await conn.execute(
            "INSERT INTO portfolio_greeks (timestamp, delta, bridge_key) VALUES (now(), 1.5, 'k')"
        )
        await ensure_bridge_schema(conn)  # no-op: the row survives, nothing is recreated
        assert await conn.fetchval("SELECT delta FROM portfolio_greeks") == 1.5
        assert await check_bridge_schema(conn) == {}
    finally:
        await conn.close()


async def test_accepts_a_pool(db: TestDatabase) -> None:
    pool = await asyncpg.create_pool(db.dsn, min_size=1, max_size=2)
    try:
        await ensure_bridge_schema(pool)
    finally:
        await pool.close()
    assert await _tables(db) == ALL_TABLES


async def test_defaults_match_what_dashboards_read(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await ensure_bridge_schema(conn)
        await conn.execute(
            "INSERT INTO portfolio_greeks (timestamp, bridge_key) VALUES (now(), 'a')"
        )
        assert await conn.fetchval("SELECT contract FROM portfolio_greeks") == "PORTFOLIO"
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO api_logs (timestamp, api_mode, event, status, message, bridge_key)"
                " VALUES (now(), 'SOCKET', 'connect', 'fatal', 'x', 'b')"
            )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO portfolio_greeks (timestamp, bridge_key) VALUES (now(), 'a')"
            )
    finally:
        await conn.close()


async def test_concurrent_bootstrap_from_many_connections(db: TestDatabase) -> None:
    conns = [await db.connect() for _ in range(6)]
    try:
        await asyncio.gather(*(ensure_bridge_schema(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert await _tables(db) == ALL_TABLES


async def test_existing_table_missing_columns_is_named_and_untouched(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        # The user's older table: only the columns the dashboards read.
        await conn.execute(
            """CREATE TABLE portfolio_greeks (
                   timestamp timestamptz, contract text DEFAULT 'PORTFOLIO',
                   delta double precision, gamma double precision, vega double precision,
                   theta double precision, underlying_price double precision)"""
        )
        await conn.execute("INSERT INTO portfolio_greeks (timestamp, delta) VALUES (now(), 7)")
        with pytest.raises(SchemaError) as info:
            await ensure_bridge_schema(conn)
        text = str(info.value)
        for column in (
            "account",
            "bridge_key",
            "dollar_delta",
            "legs",
            "legs_missing",
            "legs_model",
        ):
            assert f"missing column {column}" in text
        assert "ALTER TABLE portfolio_greeks ADD COLUMN bridge_key text;" in text
        # Nothing changed: user data and shape intact, api_logs not created either.
        assert await conn.fetchval("SELECT delta FROM portfolio_greeks") == 7
        assert await _tables(db) == {"portfolio_greeks"}
    finally:
        await conn.close()


async def test_missing_unique_key_is_refused(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await ensure_bridge_schema(conn)
        await conn.execute("DROP INDEX api_logs_bridge_key_uq")
        with pytest.raises(SchemaError, match="api_logs: no unique index on bridge_key"):
            await ensure_bridge_schema(conn)
    finally:
        await conn.close()


# --- types (issue 14.8) -----------------------------------------------------------------------

# The earlier spec-005 bridge's tables (feature-spec-005.md, US-2/US-3): the columns the
# dashboards read, no idempotency key. docs/operations.md shows the same shape.
SPEC_005_TABLES = """
CREATE TABLE portfolio_greeks (
    id               serial PRIMARY KEY,
    timestamp        timestamptz NOT NULL DEFAULT now(),
    contract         text NOT NULL DEFAULT 'PORTFOLIO',
    delta            double precision,
    gamma            double precision,
    vega             double precision,
    theta            double precision,
    underlying_price double precision
);
CREATE TABLE api_logs (
    id        serial PRIMARY KEY,
    timestamp timestamptz NOT NULL DEFAULT now(),
    api_mode  text,
    event     text,
    status    text,
    message   text
);
"""

T0 = datetime(2026, 2, 21, 14, 30, tzinfo=UTC)


def greeks(contract: str, i: int = 0, **kw: object) -> GreeksRow:
    values: dict[str, object] = dict(
        timestamp=T0 + timedelta(seconds=5 * i),
        account="DU1",
        api_mode="SOCKET",
        contract=contract,
        delta=0.1 + 0.2 + i,  # not a short decimal: an exact round trip is visible
        gamma=1e-7,
        vega=None,
        theta=-12.5,
        legs=2,
    )
    values.update(kw)
    return GreeksRow(**values)  # type: ignore[arg-type]


async def _catalog(conn: asyncpg.Connection) -> list[tuple[str, ...]]:
    """Every column (name, type, nullability, default) and index of the schema, sorted."""
    cols = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')"
        " FROM information_schema.columns WHERE table_schema = current_schema()"
    )
    idx = await conn.fetch(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
    )
    return sorted(tuple(str(v) for v in r.values()) for r in [*cols, *idx])


async def test_a_table_with_wrong_types_is_refused_with_the_exact_alters(
    db: TestDatabase,
) -> None:
    conn = await db.connect()
    try:
        await ensure_bridge_schema(conn)
        await conn.execute(
            """
            DROP TABLE portfolio_greeks;
            CREATE TABLE portfolio_greeks (
                id bigserial PRIMARY KEY, timestamp timestamp NOT NULL,
                contract varchar(8) NOT NULL DEFAULT 'PORTFOLIO', delta real,
                gamma numeric(10, 4), vega double precision NOT NULL, theta double precision,
                underlying_price double precision, dollar_delta double precision,
                account text, api_mode text, legs integer, legs_missing integer,
                legs_model integer, bridge_key text NOT NULL UNIQUE, note text NOT NULL)
            """
        )
        before = await _catalog(conn)
        with pytest.raises(SchemaError) as info:
            await ensure_bridge_schema(conn)
        text = str(info.value)
        for alter in (
            "ALTER TABLE portfolio_greeks ALTER COLUMN timestamp TYPE timestamptz"
            " USING \"timestamp\" AT TIME ZONE 'UTC';",
            'ALTER TABLE portfolio_greeks ALTER COLUMN contract TYPE text USING "contract"::text;',
            "ALTER TABLE portfolio_greeks ALTER COLUMN delta TYPE double precision USING"
            ' "delta"::double precision;',
            "ALTER TABLE portfolio_greeks ALTER COLUMN gamma TYPE double precision USING"
            ' "gamma"::double precision;',
            "ALTER TABLE portfolio_greeks ALTER COLUMN vega DROP NOT NULL;",
            "ALTER TABLE portfolio_greeks ALTER COLUMN note DROP NOT NULL;",
        ):
            assert alter in text
        assert "column delta is real, needs double precision" in text
        assert "column gamma is numeric(10,4), needs double precision" in text
        assert "--apply" not in text  # nothing additive to offer here
        assert await _catalog(conn) == before  # refused without changing anything

        # apply refuses too, and the ALTERs it names are what makes the table writable.
        with pytest.raises(SchemaError):
            await apply_bridge_schema(conn)
        assert await _catalog(conn) == before
        for line in text.splitlines():
            if line.strip().startswith("ALTER TABLE"):
                await conn.execute(line)
        await ensure_bridge_schema(conn)
        assert await check_bridge_schema(conn) == {}
    finally:
        await conn.close()

    store = await Store.open(db.dsn, command_timeout=5.0, connect_timeout=5.0)
    try:
        await store.write([greeks("PORTFOLIO")])
    finally:
        await store.close()
    got = await db.fetch("SELECT delta, gamma, vega FROM portfolio_greeks")
    assert [tuple(r.values()) for r in got] == [(0.1 + 0.2, 1e-7, None)]


async def test_compatible_types_are_accepted_and_round_trip_exactly(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await conn.execute(
            """
            CREATE TABLE portfolio_greeks (
                id bigserial PRIMARY KEY, timestamp timestamptz NOT NULL,
                contract varchar NOT NULL DEFAULT 'PORTFOLIO', delta numeric,
                gamma numeric, vega numeric, theta double precision,
                underlying_price double precision, dollar_delta double precision,
                account varchar, api_mode text, legs bigint, legs_missing bigint,
                legs_model bigint, bridge_key varchar NOT NULL UNIQUE,
                inserted_at timestamptz DEFAULT now())
            """
        )
        await ensure_bridge_schema(conn)
        assert await check_bridge_schema(conn) == {}
    finally:
        await conn.close()
    store = await Store.open(db.dsn, command_timeout=5.0, connect_timeout=5.0)
    try:
        await store.write([greeks("PORTFOLIO")])
    finally:
        await store.close()
    (got,) = await db.fetch("SELECT delta, gamma, legs FROM portfolio_greeks")
    assert float(got["delta"]) == 0.1 + 0.2  # numeric holds the double's exact value
    assert float(got["gamma"]) == 1e-7
    assert got["legs"] == 2


async def test_a_spec_005_table_is_refused_at_start_and_upgraded_by_apply(
    db: TestDatabase,
) -> None:
    conn = await db.connect()
    try:
        await conn.execute(SPEC_005_TABLES)
        await conn.execute(
            "INSERT INTO portfolio_greeks (timestamp, delta, gamma, vega, theta,"
            " underlying_price) VALUES ('2026-02-20T15:00:00Z', 12.5, 0.25, 3.5, -4.5, 510.0),"
            " ('2026-02-20T15:00:05Z', 13.5, 0.5, 3.25, -4.25, 510.5)"
        )
        await conn.execute(
            "INSERT INTO api_logs (api_mode, event, status, message)"
            " VALUES ('SOCKET', 'connect', 'success', 'connected')"
        )
        old_greeks = [dict(r) for r in await conn.fetch("SELECT * FROM portfolio_greeks")]
        old_events = [dict(r) for r in await conn.fetch("SELECT * FROM api_logs")]

        with pytest.raises(SchemaError) as info:
            await ensure_bridge_schema(conn)  # the service never alters a table itself
        text = str(info.value)
        assert "`ibkr-bridge schema --apply` adds what is missing, keeping every row" in text
        assert "ALTER TABLE api_logs ADD COLUMN detail jsonb NOT NULL DEFAULT '{}'::jsonb;" in text

        plan = await plan_bridge_schema(conn)
        assert plan.blocked == ()
        assert plan.create == ("underlying_greeks",)
        assert {f.problem for f in plan.upgrade if f.table == "portfolio_greeks"} == {
            *(f"missing column {c}" for c in ("dollar_delta", "account", "api_mode", "legs")),
            "missing column legs_missing",
            "missing column legs_model",
            "missing column bridge_key",
            "no unique index on bridge_key",
        }
        applied = await apply_bridge_schema(conn)
        assert applied == plan
        assert await check_bridge_schema(conn) == {}
        await ensure_bridge_schema(conn)  # the service now starts on it

        # Every old row kept, its values untouched, each with a key of its own.
        rows = await conn.fetch("SELECT * FROM portfolio_greeks ORDER BY id")
        for old, new in zip(old_greeks, rows, strict=True):
            assert {k: new[k] for k in old} == old
            assert new["bridge_key"].startswith("legacy:")
            assert new["account"] is None  # unknown, not guessed
            assert new["legs"] is None
            assert new["legs_model"] is None
        assert len({r["bridge_key"] for r in rows}) == 2
        (event_row,) = await conn.fetch("SELECT * FROM api_logs")
        assert {k: event_row[k] for k in old_events[0]} == old_events[0]
        assert event_row["detail"] == "{}"

        # Applying again is a no-op: an empty plan, the catalog and the rows unchanged.
        catalog = await _catalog(conn)
        again = await apply_bridge_schema(conn)
        assert again.empty
        assert await _catalog(conn) == catalog
        assert [
            dict(r) for r in await conn.fetch("SELECT * FROM portfolio_greeks ORDER BY id")
        ] == [dict(r) for r in rows]
    finally:
        await conn.close()

    # The bridge writes into the upgraded tables: PORTFOLIO here, underlyings in their own.
    store = await Store.open(db.dsn, command_timeout=5.0, connect_timeout=5.0)
    try:
        await store.ensure_schema()
        batch = [greeks("PORTFOLIO", 1), greeks("ES", 1), greeks("SPY", 1)]
        await store.write(batch)
        await store.write(batch)  # a replay: the new unique key makes it a no-op
        await store.write(
            [ApiEvent(timestamp=T0, api_mode="SOCKET", event="startup", message="up")]
        )
    finally:
        await store.close()
    got = await db.fetch("SELECT contract, delta, bridge_key FROM portfolio_greeks ORDER BY id")
    assert [r["contract"] for r in got] == ["PORTFOLIO"] * 3
    assert got[-1]["bridge_key"] == batch[0].key
    under = await db.fetch("SELECT contract FROM underlying_greeks ORDER BY contract")
    assert [r["contract"] for r in under] == ["ES", "SPY"]
    events = await db.fetch("SELECT event, detail FROM api_logs ORDER BY id")
    assert [r["event"] for r in events] == ["connect", "startup"]


async def test_a_view_in_a_tables_place_is_refused(db: TestDatabase) -> None:
    conn = await db.connect()
    try:
        await ensure_bridge_schema(conn)
        await conn.execute("ALTER TABLE api_logs RENAME TO api_logs_real")
        await conn.execute("CREATE VIEW api_logs AS SELECT * FROM api_logs_real")
        with pytest.raises(SchemaError, match="api_logs: is a view, not a table"):
            await ensure_bridge_schema(conn)
        with pytest.raises(SchemaError, match="api_logs: is a view"):
            await apply_bridge_schema(conn)
    finally:
        await conn.close()


# --- legs_model (issue 11): tables the bridge created before the column existed -------------


async def test_tables_from_before_legs_model_are_named_then_upgraded_by_apply(
    db: TestDatabase,
) -> None:
    conn = await db.connect()
    try:
        # The previous release's tables: this release's DDL without legs_model.
        await ensure_bridge_schema(conn)
        for table in ("portfolio_greeks", "underlying_greeks"):
            await conn.execute(f"ALTER TABLE {table} DROP COLUMN legs_model")
        await conn.execute(
            "INSERT INTO portfolio_greeks (timestamp, delta, legs, legs_missing, bridge_key)"
            " VALUES ('2026-02-20T15:00:00Z', 12.5, 4, 0, 'old-p')"
        )
        await conn.execute(
            "INSERT INTO underlying_greeks (timestamp, contract, delta, legs, bridge_key)"
            " VALUES ('2026-02-20T15:00:00Z', 'SPY', 12.5, 4, 'old-u')"
        )
        before = await _catalog(conn)
        with pytest.raises(SchemaError) as info:
            await ensure_bridge_schema(conn)
        text = str(info.value)
        for table in ("portfolio_greeks", "underlying_greeks"):
            assert f"  {table}: missing column legs_model" in text
            assert f"  ALTER TABLE {table} ADD COLUMN legs_model integer;" in text
        assert "api_logs" not in text
        assert await _catalog(conn) == before  # the service changes nothing
        assert await check_bridge_schema(conn) == {
            table: ["missing column legs_model"]
            for table in ("portfolio_greeks", "underlying_greeks")
        }

        plan = await apply_bridge_schema(conn)
        assert (plan.create, plan.blocked) == ((), ())
        assert [(f.table, f.fix) for f in plan.upgrade] == [
            (table, (f"ALTER TABLE {table} ADD COLUMN legs_model integer;",))
            for table in ("portfolio_greeks", "underlying_greeks")
        ]
        assert await check_bridge_schema(conn) == {}
        await ensure_bridge_schema(conn)  # the service starts on it now
        # Old rows: NULL (not recorded then, not guessed); their other values kept.
        old = await conn.fetchrow("SELECT delta, legs, legs_model FROM portfolio_greeks")
        assert tuple(old.values()) == (12.5, 4, None)
        assert await conn.fetchval("SELECT legs_model FROM underlying_greeks") is None
    finally:
        await conn.close()

    store = await Store.open(db.dsn, command_timeout=5.0, connect_timeout=5.0)
    try:
        await store.write([greeks("PORTFOLIO", 1, legs_model=1), greeks("SPY", 1, legs_model=1)])
    finally:
        await store.close()
    for table in ("portfolio_greeks", "underlying_greeks"):
        got = await db.fetch(f"SELECT bridge_key, legs_model FROM {table} ORDER BY id")
        assert [r["legs_model"] for r in got] == [None, 1]
