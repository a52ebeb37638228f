"""/healthz and /metrics over real HTTP, around a Bridge with a scripted feed, a fake
clock and a real PostgreSQL behind a TCP proxy (so the database can be taken away)."""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

import ibkr_bridge
from ibkr_bridge.config import load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.machines import BreakerState, ConnectionState
from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.service.bridge import Bridge
from ibkr_bridge.service.health import HealthServer
from ibkr_bridge.sim import TwsSimulator, single_underlying_portfolio
from ibkr_bridge.testing import ScriptedFeed, TcpProxy, TestDatabase, wait_until

NY = ZoneInfo("America/New_York")
Key = tuple[str, tuple[tuple[str, str], ...]]


def two_rows(now: datetime, n: int) -> list[GreeksRow]:
    """Each snapshot: a PORTFOLIO row and an SPY row whose values grow with n."""
    k = float(n)
    common: dict[str, Any] = {"timestamp": now, "account": "DU1", "api_mode": "SOCKET"}
    return [
        GreeksRow(
            **common,
            delta=10 * k,
            gamma=0.5 * k,
            vega=-3 * k,
            theta=-k,
            dollar_delta=1000 * k,
        ),
        # vega unknown for this underlying: its gauge must be absent, not 0.
        GreeksRow(**common, contract="SPY", delta=7 * k, gamma=0.25 * k, theta=-0.5 * k),
    ]


def scripted(**kwargs: Any) -> ScriptedFeed:
    return ScriptedFeed(rows=two_rows, **kwargs)


@attrs.define
class World:
    """A running bridge with its health server, and an HTTP client to ask it."""

    clock: FakeClock
    bridge: Bridge
    server: HealthServer
    db: TestDatabase
    http: aiohttp.ClientSession

    @property
    def state(self) -> ConnectionState:
        return self.bridge.connection_state

    async def healthz(self) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.server.port}/healthz"
        async with self.http.get(url) as resp:
            return resp.status, await resp.json()

    async def metrics(self) -> dict[Key, float]:
        url = f"http://127.0.0.1:{self.server.port}/metrics"
        async with self.http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def ticks(self, n: int, interval: float = 5.0) -> None:
        for _ in range(n):
            await self.clock.advance(interval)

    async def live(self) -> None:
        await wait_until(lambda: self.state is ConnectionState.LIVE)


@attrs.define
class ScriptedWorld(World):
    """The bridge runs on a scripted feed, its database behind a TCP proxy."""

    feed: ScriptedFeed
    proxy: TcpProxy


def one(metrics: dict[Key, float], name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def states(metrics: dict[Key, float], machine: str) -> dict[str, float]:
    return {
        dict(labels)["state"]: value
        for (name, labels), value in metrics.items()
        if name == "ibkr_bridge_state" and dict(labels)["machine"] == machine
    }


def transitions(metrics: dict[Key, float]) -> dict[tuple[str, str, str], float]:
    out = {}
    for (name, labels), value in metrics.items():
        if name == "ibkr_bridge_transitions_total" and value:
            d = dict(labels)
            out[(d["machine"], d["from"], d["to"])] = value
    return out


def tuesday_afternoon() -> FakeClock:
    return FakeClock(start=datetime(2026, 3, 10, 15, 0, tzinfo=NY).astimezone(UTC))


@contextlib.asynccontextmanager
async def make_world(
    db: TestDatabase, tmp_path: Path, clock: FakeClock, feed: ScriptedFeed
) -> AsyncIterator[ScriptedWorld]:
    async with TcpProxy(*db.server_address()) as proxy:
        settings = load_settings(
            {
                "DATABASE_URL": db.proxied_dsn(proxy),
                "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
                "BRIDGE_RETRY_INTERVAL": "10",
                "BRIDGE_DB_CONNECT_TIMEOUT": "1",
                "BRIDGE_DB_COMMAND_TIMEOUT": "2",
            },
            use_dotenv=False,
        )
        bridge = Bridge(settings, feed=feed, clock=clock)
        # Attached before start, as the service does: the first transitions are counted.
        server = HealthServer(bridge, clock=clock)
        async with aiohttp.ClientSession() as http, server, bridge:
            yield ScriptedWorld(
                clock=clock, bridge=bridge, server=server, db=db, http=http, feed=feed, proxy=proxy
            )


@pytest.fixture
async def world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[ScriptedWorld]:
    async with make_world(db, tmp_path, tuesday_afternoon(), scripted()) as w:
        yield w


async def test_healthz_follows_rows_then_a_long_feed_outage(world: ScriptedWorld) -> None:
    w = world
    policy = w.server.policy
    await w.live()
    await w.ticks(3)
    await w.clock.advance(2.0)
    code, body = await w.healthz()
    assert code == 200
    assert body["status"] == "ok"
    assert body["reason"] is None
    assert (body["connection"], body["breaker"], body["stale"]) == ("LIVE", "CLOSED", False)
    assert body["rows_submitted"] == 6
    assert body["last_row_age_seconds"] == 2.0
    assert body["last_row_at"] == (w.clock.now() - timedelta(seconds=2)).isoformat()
    assert states(await w.metrics(), "connection")["LIVE"] == 1.0

    # LIVE but no rows (no complete market state): healthy until max_row_age.
    w.feed.ready = False
    since_row = 2.0
    while since_row + 5.0 <= policy.max_row_age:
        await w.ticks(1)
        since_row += 5.0
    assert (await w.healthz())[0] == 200
    await w.ticks(1)
    code, body = await w.healthz()
    assert code == 503
    assert "no row written" in body["reason"]
    w.feed.ready = True
    await w.ticks(1)
    assert (await w.healthz())[0] == 200

    # The feed drops and every reconnection fails: fine during the quick back-off only.
    w.feed.fail_next = [f"refused {i}" for i in range(20)]
    w.feed.drop()
    await wait_until(lambda: w.state is ConnectionState.BACKOFF)
    dropped_at = w.clock.monotonic()
    code, body = await w.healthz()
    assert code == 200
    assert "reconnecting" in body["note"]
    assert states(await w.metrics(), "connection") == {
        "DISCONNECTED": 0.0,
        "CONNECTING": 0.0,
        "LIVE": 0.0,
        "RESET_WAIT": 0.0,
        "BACKOFF": 1.0,
        "STOPPED": 0.0,
    }
    await w.clock.advance(policy.outage_grace - 1.0)
    assert w.state is ConnectionState.BACKOFF
    assert (await w.healthz())[0] == 200
    await w.clock.advance(2.0)
    code, body = await w.healthz()
    assert code == 503
    assert body["status"] == "unhealthy"
    assert "not connected to IBKR" in body["reason"]
    assert "BACKOFF" in body["reason"]
    assert body["connection"] == "BACKOFF"
    assert w.clock.monotonic() - dropped_at > policy.outage_grace

    # Connects again: healthy as soon as a row is written.
    w.feed.fail_next.clear()
    deadline = w.clock.next_deadline()
    assert deadline is not None
    await w.clock.advance(deadline - w.clock.monotonic())
    await w.live()
    await w.ticks(1)
    code, body = await w.healthz()
    assert code == 200
    assert body["last_row_age_seconds"] == 0.0

    await w.bridge.sink.flush()
    m = await w.metrics()
    failures = w.feed.connects - 2  # the first connect and the last one succeeded
    assert failures >= 3
    assert one(m, "ibkr_bridge_connect_attempts_total") == w.feed.connects
    assert one(m, "ibkr_bridge_connect_failures_total") == failures
    assert transitions(m)[("connection", "CONNECTING", "BACKOFF")] == failures
    assert transitions(m)[("connection", "LIVE", "BACKOFF")] == 1
    assert transitions(m)[("connection", "CONNECTING", "LIVE")] == 2


async def test_first_row_grace_after_connecting(db: TestDatabase, tmp_path: Path) -> None:
    async with make_world(db, tmp_path, tuesday_afternoon(), scripted(ready=False)) as w:
        await w.live()
        grace = w.server.policy.first_row_grace
        await w.clock.advance(grace)
        code, body = await w.healthz()
        assert code == 200
        assert "waiting for complete market data" in body["note"]
        assert body["last_row_at"] is None
        assert body["last_row_age_seconds"] is None
        await w.clock.advance(1.0)
        code, body = await w.healthz()
        assert code == 503
        assert "no row written" in body["reason"]
        assert "ibkr_bridge_last_row_age_seconds" not in {k[0] for k in await w.metrics()}


async def test_reset_wait_is_an_expected_wait(db: TestDatabase, tmp_path: Path) -> None:
    clock = FakeClock(start=datetime(2026, 3, 7, 23, 44, 50, tzinfo=NY).astimezone(UTC))
    async with make_world(db, tmp_path, clock, scripted()) as w:
        await w.live()
        await w.ticks(3)  # 23:45:05 New York: inside the reset window
        assert w.feed.listener is not None
        w.feed.listener.feed_data_lost(1100, "Connectivity between IB and TWS has been lost.")
        stale_for = w.server.policy.stale_grace + 5.0
        await w.clock.advance(stale_for)
        code, body = await w.healthz()
        assert code == 200  # stale during the reset is expected too
        assert "nightly reset window" in body["note"]
        w.feed.drop("Gateway closed the socket")
        await wait_until(lambda: w.state is ConnectionState.RESET_WAIT)
        # Far longer than the outage grace, yet expected.
        await w.clock.advance(w.server.policy.outage_grace + 600.0)
        assert w.state is ConnectionState.RESET_WAIT
        code, body = await w.healthz()
        assert code == 200
        assert "nightly reset" in body["note"]
        assert body["connection"] == "RESET_WAIT"
        assert body["last_row_age_seconds"] == stale_for + w.server.policy.outage_grace + 600.0
        m = await w.metrics()
        assert [s for s, v in states(m, "connection").items() if v] == ["RESET_WAIT"]
        assert one(m, "ibkr_bridge_healthy") == 1.0

        deadline = w.clock.next_deadline()
        assert deadline is not None
        await w.clock.advance(deadline - w.clock.monotonic())
        await w.live()
        await w.ticks(1)
        assert (await w.healthz())[0] == 200
        m = await w.metrics()
        assert transitions(m)[("connection", "LIVE", "RESET_WAIT")] == 1
        assert transitions(m)[("connection", "RESET_WAIT", "CONNECTING")] == 1
        assert [s for s, v in states(m, "connection").items() if v] == ["LIVE"]


async def test_stale_data_healthy_within_grace_then_503(world: ScriptedWorld) -> None:
    w = world
    await w.live()
    await w.ticks(2)
    assert w.feed.listener is not None
    w.feed.listener.feed_data_lost(1100, "Connectivity between IB and TWS has been lost.")
    stale_ticks = int(w.server.policy.stale_grace // 5.0)
    await w.ticks(stale_ticks)
    code, body = await w.healthz()
    assert code == 200
    assert body["stale"] is True
    assert "1100" in body["note"]
    assert one(await w.metrics(), "ibkr_bridge_stale") == 1.0
    await w.ticks(1)
    code, body = await w.healthz()
    assert code == 503
    assert "1100" in body["reason"]
    assert one(await w.metrics(), "ibkr_bridge_healthy") == 0.0

    w.feed.listener.feed_data_restored(1102, "restored, data maintained", resubscribe=False)
    await w.ticks(1)
    code, body = await w.healthz()
    assert code == 200
    assert body["stale"] is False
    m = await w.metrics()
    assert one(m, "ibkr_bridge_stale") == 0.0
    ticks_run = 2 + stale_ticks + 1 + 1
    assert one(m, "ibkr_bridge_tick_duration_seconds_count") == ticks_run
    assert one(m, "ibkr_bridge_ticks_skipped_total") == stale_ticks + 1
    assert one(m, "ibkr_bridge_rows_submitted_total") == 2 * 3
    # 1100 and 1102 are internal transitions of LIVE.
    assert transitions(m)[("connection", "LIVE", "LIVE")] == 2


async def test_database_outage_in_healthz_and_metrics(world: ScriptedWorld) -> None:
    w = world
    breaker = w.bridge.sink.breaker
    await w.live()
    await w.ticks(2)
    await w.bridge.sink.flush()
    assert one(await w.metrics(), "ibkr_bridge_records_buffered_total") == 0

    w.proxy.down()
    await w.ticks(1)
    await wait_until(lambda: breaker.state is BreakerState.OPEN)
    opened_at = w.clock.monotonic()  # the clock stands still while the write fails
    code, body = await w.healthz()
    assert code == 200  # rows are safe in the buffer: not yet a problem
    assert body["breaker"] == "OPEN"
    assert "database unreachable" in body["note"]
    assert body["buffer_pending_bytes"] > 0
    m = await w.metrics()
    assert states(m, "breaker") == {"CLOSED": 0.0, "OPEN": 1.0, "HALF_OPEN": 0.0}
    assert transitions(m)[("breaker", "CLOSED", "OPEN")] == 1
    assert one(m, "ibkr_bridge_buffer_pending_bytes") == body["buffer_pending_bytes"]
    assert one(m, "ibkr_bridge_records_buffered_total") == w.bridge.sink.stats.buffered > 0
    assert one(m, "ibkr_bridge_records_drained_total") == 0

    # The buffer-full rule, at its exact threshold.
    policy, cap = w.server.policy, w.bridge.settings.buffer_max_bytes
    pending = body["buffer_pending_bytes"]
    w.server.policy = attrs.evolve(policy, buffer_full_ratio=pending / cap)
    code, body = await w.healthz()
    assert code == 503
    assert "the buffer is" in body["reason"]
    w.server.policy = attrs.evolve(policy, buffer_full_ratio=(pending + 1) / cap)
    assert (await w.healthz())[0] == 200
    w.server.policy = policy

    grace = w.server.policy.db_outage_grace
    while w.clock.monotonic() - opened_at <= grace:
        await w.ticks(1)
        # A failed retry re-opens the breaker through real (refused) IO.
        await wait_until(lambda: breaker.state is BreakerState.OPEN)
    code, body = await w.healthz()
    assert code == 503
    assert "database unreachable" in body["reason"]
    assert body["connection"] == "LIVE"  # still writing, into the buffer
    m = await w.metrics()
    assert transitions(m)[("breaker", "HALF_OPEN", "OPEN")] >= 1

    w.proxy.up()
    deadline = breaker.next_retry_at
    assert deadline is not None
    await w.clock.advance(deadline - w.clock.monotonic())
    await wait_until(lambda: breaker.state is BreakerState.CLOSED)
    await w.bridge.sink.flush()
    code, body = await w.healthz()
    assert code == 200
    assert body["breaker"] == "CLOSED"
    assert body["buffer_pending_bytes"] == 0

    m = await w.metrics()
    stats = w.bridge.sink.stats
    assert stats.buffered > 0
    for name, value in (
        ("written", stats.written),
        ("buffered", stats.buffered),
        ("drained", stats.drained),
        ("rejected", stats.rejected),
        ("refused", stats.refused_full),
    ):
        assert one(m, f"ibkr_bridge_records_{name}_total") == value, name
    assert one(m, "ibkr_bridge_buffer_quarantined_lines_total") == stats.quarantined
    assert one(m, "ibkr_bridge_buffer_pending_bytes") == 0

    # The database is the independent witness: every row and every transition reached it.
    rows = await w.db.fetch(
        "SELECT (SELECT count(*) FROM portfolio_greeks)"
        " + (SELECT count(*) FROM underlying_greeks) AS n"
    )
    assert one(m, "ibkr_bridge_rows_submitted_total") == rows[0]["n"]
    logged = await w.db.fetch(
        "SELECT machine, source_state, dest_state FROM api_logs WHERE event = 'transition'"
    )
    expected = Tally((r["machine"], r["source_state"], r["dest_state"]) for r in logged)
    assert transitions(m) == dict(expected)
    attempts = await w.db.fetch(
        "SELECT count(*) AS n FROM api_logs WHERE event = 'connect' AND NOT detail ? 'outcome'"
    )
    assert one(m, "ibkr_bridge_connect_attempts_total") == attempts[0]["n"] == 1

    # A second outage gets a fresh grace.
    w.proxy.down()
    await w.ticks(1)
    await wait_until(lambda: breaker.state is BreakerState.OPEN)
    code, body = await w.healthz()
    assert code == 200
    assert "database unreachable" in body["note"]


async def test_failing_buffer_in_healthz_and_metrics(
    world: ScriptedWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    w = world
    breaker = w.bridge.sink.breaker
    await w.live()
    await w.ticks(1)
    await w.bridge.sink.flush()

    def enospc(records: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(w.bridge.sink.buffer, "append", enospc)
    w.proxy.down()
    await w.ticks(2)
    await wait_until(lambda: w.bridge.sink.stats.memory_queue_depth > 0)
    code, body = await w.healthz()
    assert code == 503  # at once: rows are not durable anywhere
    assert "the buffer is failing" in body["reason"]
    assert "No space left on device" in body["reason"]
    stats = w.bridge.sink.stats
    m = await w.metrics()
    assert one(m, "ibkr_bridge_memory_queue_depth") == stats.memory_queue_depth > 0
    assert one(m, "ibkr_bridge_records_memory_queued_total") == stats.memory_queued > 0
    assert one(m, "ibkr_bridge_records_refused_total") == stats.refused_full == 0

    w.proxy.up()
    deadline = breaker.next_retry_at
    assert deadline is not None
    await w.clock.advance(deadline - w.clock.monotonic())
    await wait_until(lambda: breaker.state is BreakerState.CLOSED)
    await w.bridge.sink.flush()
    code, body = await w.healthz()
    assert code == 200, body
    m = await w.metrics()
    assert one(m, "ibkr_bridge_memory_queue_depth") == 0
    # A counter: it kept what waited in memory while the breaker waited for its retry.
    assert one(m, "ibkr_bridge_records_memory_queued_total") >= stats.memory_queued
    assert one(m, "ibkr_bridge_records_refused_total") == 0


async def test_greeks_gauges_equal_the_last_row(world: ScriptedWorld) -> None:
    w = world
    await w.live()
    await w.ticks(4)
    await w.bridge.sink.flush()
    m = await w.metrics()
    # The last tick: its PORTFOLIO row and, in their own table, its underlyings' rows.
    last = await w.db.fetch(
        "SELECT * FROM portfolio_greeks WHERE timestamp = (SELECT max(timestamp) "
        "FROM portfolio_greeks) UNION ALL SELECT * FROM underlying_greeks WHERE timestamp = "
        "(SELECT max(timestamp) FROM portfolio_greeks)"
    )
    assert {r["contract"] for r in last} == {"PORTFOLIO", "SPY"}
    for row in last:
        for greek in ("delta", "gamma", "vega", "theta", "dollar_delta"):
            key: Key = (f"ibkr_bridge_net_{greek}", (("contract", row["contract"]),))
            if row[greek] is None:
                assert key not in m, key
            else:
                assert m[key] == row[greek], key
    assert ("ibkr_bridge_net_vega", (("contract", "SPY"),)) not in m
    assert one(m, "ibkr_bridge_net_delta", contract="PORTFOLIO") == 40.0
    assert one(m, "ibkr_bridge_last_row_timestamp_seconds") == w.clock.now().timestamp()
    assert one(m, "ibkr_bridge_last_row_age_seconds") == 0.0
    assert one(m, "ibkr_bridge_info", mode="SOCKET", version=ibkr_bridge.__version__) == 1.0
    assert one(m, "ibkr_bridge_tick_duration_seconds_count") == 4
    async with w.http.head(f"http://127.0.0.1:{w.server.port}/healthz") as resp:
        assert resp.status == 200
    async with w.http.get(f"http://127.0.0.1:{w.server.port}/other") as resp:
        assert resp.status == 404


async def test_two_servers_in_one_process_do_not_clash(world: ScriptedWorld) -> None:
    w = world
    await w.live()
    await w.ticks(1)
    # A second server on the same bridge: its own registry, its own port.
    async with HealthServer(w.bridge, clock=w.clock) as other:
        assert other.port != w.server.port
        await w.ticks(1)
        url = f"http://127.0.0.1:{other.port}/metrics"
        async with w.http.get(url) as resp:
            text = await resp.text()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    # It only saw what happened after it was attached.
    assert samples["ibkr_bridge_tick_duration_seconds_count"] == 1
    assert one(await w.metrics(), "ibkr_bridge_tick_duration_seconds_count") == 2


async def test_with_the_tws_simulator_and_a_real_1100(db: TestDatabase, tmp_path: Path) -> None:
    """SOCKET mode end to end: ib_async, the Gateway simulator, IB's own 1100 and 1102."""
    clock = tuesday_afternoon()
    portfolio = single_underlying_portfolio(as_of=clock.now())
    async with TwsSimulator(portfolio, clock=clock, tick_interval=10_000_000.0) as sim:
        settings = load_settings(
            {
                "IB_SOCKET_PORT": str(sim.port),
                "IB_CONNECT_TIMEOUT": "3",
                "IB_PROBE_TIMEOUT": "0.5",
                "DATABASE_URL": db.dsn,
                "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
                # A market that never moves sends its Greeks once: not stale here.
                "BRIDGE_STALE_AFTER": "86400",
            },
            use_dotenv=False,
        )
        bridge = Bridge(settings, clock=clock)
        server = HealthServer(bridge, clock=clock)
        async with aiohttp.ClientSession() as http, server, bridge:
            w = World(clock=clock, bridge=bridge, server=server, db=db, http=http)
            await w.live()
            feed = bridge._feed
            await wait_until(lambda: feed.snapshot(clock.now()) is not None)
            await w.ticks(3)
            await bridge.sink.flush()
            code, body = await w.healthz()
            assert code == 200
            assert body["rows_submitted"] == bridge.status.rows_submitted > 0
            m = await w.metrics()
            last = await db.fetch(
                "SELECT * FROM portfolio_greeks WHERE timestamp = (SELECT max(timestamp) "
                "FROM portfolio_greeks)"
            )
            assert last
            for row in last:
                for greek in ("delta", "gamma", "vega", "theta"):
                    assert (
                        one(m, f"ibkr_bridge_net_{greek}", contract=row["contract"]) == row[greek]
                    ), (row["contract"], greek)

            stale_grace = server.policy.stale_grace
            await sim.daily_reset("1102", outage=stale_grace + 10.0)
            await wait_until(lambda: bridge.status.stale)
            code, body = await w.healthz()
            assert code == 200
            assert "1100" in body["note"]
            await w.ticks(int(stale_grace // 5.0) + 1)
            code, body = await w.healthz()
            assert code == 503
            assert "1100" in body["reason"]
            await w.ticks(2)  # the simulator sends 1102
            await wait_until(lambda: not bridge.status.stale)
            await w.ticks(1)
            code, body = await w.healthz()
            assert code == 200
            assert body["last_row_age_seconds"] == 0.0
            m = await w.metrics()
            assert transitions(m)[("connection", "LIVE", "LIVE")] == 2
            assert one(m, "ibkr_bridge_stale") == 0.0
