"""Every panel of examples/grafana's dashboard, run against a real PostgreSQL with planted
rows written by the bridge's own code, gives the series a trader expects."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ibkr_bridge.core.greeks import (
    Leg,
    PositionRow,
    aggregate_accounts,
    apply_model,
    position_rows,
)
from ibkr_bridge.core.records import ApiEvent
from ibkr_bridge.storage.positions import copy_positions, create_position_table
from ibkr_bridge.storage.store import Store
from ibkr_bridge.testing import TestDatabase

GRAFANA = Path(__file__).resolve().parents[2] / "examples" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "ibkr-bridge.json").read_text())
T0 = datetime(2027, 3, 1, 15, 0, tzinfo=UTC)
TICKS = [T0 + timedelta(seconds=5 * i) for i in range(3)]


def book(i: int) -> list[Leg]:
    """Two accounts: stock, equity options (one short, one IB has not computed), futures
    and a futures option."""
    spy = 500.0 + i
    return [
        Leg(conid=1, symbol="SPY", sec_type="STK", quantity=200, account="U1"),
        Leg(conid=2, symbol="SPY", sec_type="OPT", quantity=-5, multiplier=100.0, delta=0.55,
            gamma=0.02, vega=0.3, theta=-0.12, strike=500.0, right="C", expiry="20270319",
            underlying_price=spy, account="U1", local_symbol="SPY 270319C500"),
        Leg(conid=3, symbol="SPY", sec_type="OPT", quantity=10, multiplier=100.0, delta=-2.0,
            gamma=-2.0, vega=-2.0, theta=-2.0, strike=480.0, right="P", expiry="20270416",
            implied_vol=0.22, underlying_price=spy, account="U2", local_symbol="SPY 270416P480"),
        Leg(conid=4, symbol="ES", sec_type="FUT", quantity=-1, multiplier=50.0, account="U2",
            local_symbol="ESM7"),
        Leg(conid=5, symbol="ES", sec_type="FOP", quantity=2, multiplier=50.0, delta=0.4,
            gamma=0.001, vega=4.0, theta=-1.5, strike=5100.0, right="C", expiry="20270618",
            underlying_price=5050.0, account="U2", local_symbol="ES 270618C5100"),
    ]  # fmt: skip


@pytest.fixture
async def planted(db: TestDatabase) -> TestDatabase:
    store = await Store.open(db.dsn)
    try:
        await store.ensure_schema()
        conn = await db.connect()
        try:
            await create_position_table(conn, T0, ahead=1)
            for i, now in enumerate(TICKS):
                legs, omit = apply_model(book(i), now=now, rate=0.04)
                nets = aggregate_accounts(legs, timestamp=now, api_mode="SOCKET", omit=omit)
                await store.write(nets)
                async with conn.transaction():
                    await copy_positions(
                        conn, position_rows(legs, timestamp=now, api_mode="SOCKET")
                    )
        finally:
            await conn.close()
        events = [
            ApiEvent(timestamp=T0 + timedelta(seconds=s), api_mode="SOCKET", event=e,
                     message=e, status=st)  # type: ignore[arg-type]
            for s, e, st in [(1, "connected", "info"), (2, "farm_broken", "warning"),
                             (400, "disconnected", "error"), (401, "reconnect", "warning")]
        ]  # fmt: skip
        await store.write(events)
    finally:
        await store.close()
    return db


def expand(sql: str, account: str) -> str:
    """Grafana's PostgreSQL macros and the $account variable, as Grafana expands them."""
    start, end = (T0 - timedelta(hours=1)).isoformat(), (T0 + timedelta(hours=1)).isoformat()
    sql = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN '{start}' AND '{end}'", sql)
    sql = re.sub(
        r"\$__timeGroupAlias\((\w+), *(\d+)m\)",
        lambda m: (
            f"to_timestamp(floor(extract(epoch from {m[1]}) / {int(m[2]) * 60}) * "
            f'{int(m[2]) * 60}) AS "time"'
        ),
        sql,
    )
    return sql.replace("${account}", account)


def panel(title: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [p for p in DASHBOARD["panels"] if p["title"] == title]
    return found


async def run(db: TestDatabase, title: str, account: str = "all") -> list[dict[str, Any]]:
    (target,) = panel(title)["targets"]
    return [dict(r) for r in await db.fetch(expand(target["rawSql"], account))]


def test_provisioning_points_at_the_dashboards_data_source() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/ibkr-bridge.yaml").read_text())
    (source,) = sources["datasources"]
    assert "password" not in source  # only in secureJsonData, from the environment
    assert source["secureJsonData"]["password"].startswith("${")
    for p in DASHBOARD["panels"]:
        assert p["datasource"]["uid"] == source["uid"]
        assert all(t["rawSql"].strip() for t in p["targets"])


async def test_net_greeks_is_the_all_accounts_row_per_tick(planted: TestDatabase) -> None:
    rows = await run(planted, "Net Greeks")
    assert [r["time"] for r in rows] == TICKS
    one = {r["time"]: r for r in await run(planted, "Net Greeks", "U1")}
    two = {r["time"]: r for r in await run(planted, "Net Greeks", "U2")}
    for r in rows:
        assert r["delta"] == pytest.approx(one[r["time"]]["delta"] + two[r["time"]]["delta"])
    # U1: 200 shares and -5 calls at 0.55 delta.
    assert one[T0]["delta"] == pytest.approx(200 - 5 * 100 * 0.55)


async def test_by_underlying_and_by_account(planted: TestDatabase) -> None:
    under = await run(planted, "Dollar delta by underlying")
    assert {(r["time"], r["metric"]) for r in under} == {
        (t, s) for t in TICKS for s in ("ES", "SPY")
    }
    by_account = await run(planted, "Net delta by account")
    assert {(r["time"], r["metric"]) for r in by_account} == {
        (t, a) for t in TICKS for a in ("U1", "U2")
    }


def latest_positions() -> list[PositionRow]:
    legs, _ = apply_model(book(len(TICKS) - 1), now=TICKS[-1], rate=0.04)
    return position_rows(legs, timestamp=TICKS[-1], api_mode="SOCKET")


async def test_top_positions_are_the_latest_tick_ordered_by_size(planted: TestDatabase) -> None:
    top = await run(planted, "Top positions by |delta|")
    want = sorted(latest_positions(), key=lambda r: -abs(r.delta or 0.0))
    assert [(r["symbol"], r["delta"]) for r in top] == [(r.symbol, r.delta) for r in want]
    assert {r["symbol"]: r["greeks_source"] for r in top}["SPY 270416P480"] == "model"
    vega = await run(planted, "Top positions by |vega|", "U2")
    want = sorted(
        (r for r in latest_positions() if r.account == "U2" and r.vega),
        key=lambda r: -abs(r.vega or 0),
    )
    assert [r["symbol"] for r in vega] == [r.symbol for r in want]
    assert len(vega) == 2  # the future has no vega: not a vega position


async def test_legs_by_source_and_bridge_health(planted: TestDatabase) -> None:
    legs = await run(planted, "Option legs by Greeks source")
    assert {(r["time"], r["metric"], r["legs"]) for r in legs} == {
        (t, src, n) for t in TICKS for src, n in (("ib", 2), ("model", 1))
    }
    health = await run(planted, "Bridge warnings and errors")
    assert [(r["time"], r["metric"], r["events"]) for r in health] == [
        (T0, "warning", 1), (T0 + timedelta(minutes=5), "error", 1),
        (T0 + timedelta(minutes=5), "warning", 1),
    ]  # fmt: skip
    events = await run(planted, "Bridge events")
    assert [r["event"] for r in events] == ["reconnect", "disconnected", "farm_broken", "connected"]


async def test_net_rows_count_the_model_legs_without_position_rows(
    planted: TestDatabase,
) -> None:
    # The same count as position_greeks gives, from portfolio_greeks alone (issue 11).
    by_source = {
        r["time"]: r["legs"]
        for r in await run(planted, "Option legs by Greeks source")
        if r["metric"] == "model"
    }
    title = "Option legs with model or no Greeks (net rows)"
    rows = await run(planted, title)
    assert [(r["time"], r["model"], r["missing"]) for r in rows] == [(t, 1, 0) for t in TICKS]
    assert {r["time"]: r["model"] for r in rows} == by_source
    # The model leg (the put IB sent -2 for) is U2's; U1 has none.
    assert [r["model"] for r in await run(planted, title, "U2")] == [1] * len(TICKS)
    assert [r["model"] for r in await run(planted, title, "U1")] == [0] * len(TICKS)


async def test_the_documented_one_minute_rollup_runs(planted: TestDatabase) -> None:
    doc = (GRAFANA.parents[1] / "docs" / "operations.md").read_text()
    block = r'```sql title="position_greeks_1m.sql"\n(CREATE OR REPLACE VIEW .*?)```'
    (view,) = re.findall(block, doc, re.S)
    conn = await planted.connect()
    try:
        await conn.execute(view)
        rows = await conn.fetch("SELECT * FROM position_greeks_1m WHERE symbol = 'SPY 270319C500'")
    finally:
        await conn.close()
    (row,) = rows  # three ticks inside one minute
    assert (row["minute"], row["ticks"]) == (T0, 3)
    assert row["delta"] == pytest.approx(-5 * 100 * 0.55)
