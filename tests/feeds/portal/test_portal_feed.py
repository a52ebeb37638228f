"""PortalFeed against the Client Portal simulator over real HTTPS, time on a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import attrs
import pytest

from ibkr_bridge import Bridge, ConnectionState
from ibkr_bridge.config import load_settings
from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.core.errors import AccountSelectionError, GatewayError
from ibkr_bridge.core.records import GreeksRow, Status
from ibkr_bridge.feeds.portal import NeedsLoginError, PortalFeed, api_root
from ibkr_bridge.feeds.ratelimit import PORTAL_LIMITS, Limit, RateLimiter
from ibkr_bridge.sim.portal import (
    AUTH_STATUS,
    PORTFOLIO_ACCOUNTS,
    POSITIONS,
    REAUTHENTICATE,
    SNAPSHOT,
    SSODH_INIT,
    TICKLE,
    PortalSimulator,
)
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    SPY_CONID,
    Instrument,
    Portfolio,
    Position,
    black_scholes,
    default_portfolio,
    single_underlying_portfolio,
    years_between,
)
from ibkr_bridge.testing import TestDatabase, expected_net_greeks, wait_until
from tests.sim.portal.test_portal_sim import START, run_for, settle

_T = TypeVar("_T")

CALL = 800000101
PUT = 800000102


class Recorder:
    """A FeedListener that remembers what it was told."""

    def __init__(self) -> None:
        self.disconnects: list[str] = []
        self.events: list[tuple[str, Status, str, dict[str, Any]]] = []

    def feed_disconnected(self, reason: str) -> None:
        self.disconnects.append(reason)

    def feed_data_lost(self, code: int, message: str) -> None:
        raise AssertionError("PORTAL has no 1100")

    def feed_data_restored(self, code: int, message: str, *, resubscribe: bool) -> None:
        raise AssertionError("PORTAL has no 1101/1102")

    def feed_event(
        self,
        event: str,
        message: str,
        *,
        status: Status = "info",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        self.events.append((event, status, message, dict(detail or {})))

    def named(self, event: str) -> list[tuple[str, Status, str, dict[str, Any]]]:
        return [e for e in self.events if e[0] == event]


class Rig:
    """A simulator, a feed and a listener sharing one FakeClock."""

    def __init__(self, sim: PortalSimulator, feed: PortalFeed, clock: FakeClock) -> None:
        self.sim = sim
        self.feed = feed
        self.clock = clock
        self.listener = Recorder()
        feed.set_listener(self.listener)

    def busy(self) -> int:
        # A request parked by a fault (frozen, slow) waits for the clock, not for IO.
        return self.sim.busy + max(0, self.feed.requests_in_flight - self.sim.parked)

    async def run(self, seconds: float) -> None:
        await run_for(self.clock, seconds, self.busy)

    async def drive(self, work: Awaitable[_T], limit: float = 600.0) -> _T:
        """Await ``work`` while moving the clock whenever it waits on it."""
        task = asyncio.ensure_future(work)
        end = self.clock.monotonic() + limit
        while not task.done():
            await settle(self.busy)
            if task.done():
                break
            if self.clock.monotonic() >= end:
                task.cancel()
                raise AssertionError(f"still waiting after {limit} s of clock time")
            deadline = self.clock.next_deadline()
            step = 0.5 if deadline is None else max(0.0, deadline - self.clock.monotonic())
            await self.clock.advance(min(step, 0.5) if step > 0 else 0)
        return task.result()

    async def connect(self) -> None:
        await self.drive(self.feed.connect())

    async def rows(self) -> list[GreeksRow]:
        """Rows once the first data after the pre-flight arrived."""
        await self.run(self.feed.poll_interval)
        rows = self.feed.snapshot(self.clock.now())
        assert rows is not None
        return rows

    def last_snapshot_time(self) -> datetime:
        return next(r.wall for r in reversed(self.sim.requests) if r.endpoint == SNAPSHOT)


def make_feed(sim: PortalSimulator, clock: FakeClock, **kwargs: Any) -> PortalFeed:
    options: dict[str, Any] = {"gateway_url": sim.base_url, "ca_path": sim.ca_path, "clock": clock}
    options.update(kwargs)
    return PortalFeed(**options)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=START)


@pytest.fixture
async def rig(clock: FakeClock) -> AsyncIterator[Rig]:
    async with PortalSimulator(default_portfolio(as_of=START), clock=clock) as sim:
        feed = make_feed(sim, clock)
        try:
            yield Rig(sim, feed, clock)
        finally:
            await feed.disconnect()


expected_net = expected_net_greeks


def assert_row(row: GreeksRow, net: Mapping[str, float]) -> None:
    for name in ("delta", "gamma", "vega", "theta"):
        value = getattr(row, name)
        assert value is not None, name
        assert value == pytest.approx(net[name], rel=1e-9, abs=1e-9), name


# -- TLS ------------------------------------------------------------------------------------


async def test_unknown_certificate_is_refused(rig: Rig) -> None:
    feed = PortalFeed(gateway_url=rig.sim.base_url, clock=rig.clock)
    feed.set_listener(rig.listener)
    with pytest.raises(GatewayError, match="certificate") as caught:
        await rig.drive(feed.connect())
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorCertificateError)
    assert rig.sim.count() == 0
    await feed.disconnect()


async def test_verify_tls_false_warns_at_every_connect(rig: Rig) -> None:
    feed = PortalFeed(gateway_url=rig.sim.url, verify_tls=False, clock=rig.clock)
    feed.set_listener(rig.listener)
    for _ in range(2):
        await rig.drive(feed.connect())
        await feed.disconnect()
    warnings = rig.listener.named("tls_unverified")
    assert len(warnings) == 2
    assert all(status == "warning" for _, status, _, _ in warnings)


# -- values ---------------------------------------------------------------------------------


async def test_snapshot_equals_a_recomputation_from_the_portfolio(rig: Rig) -> None:
    await rig.connect()
    assert rig.feed.account == DEFAULT_ACCOUNT
    # Connected, positions synced, but the pre-flight gave no data yet.
    assert rig.feed.snapshot(rig.clock.now()) is None
    rows = await rig.rows()
    at = rig.last_snapshot_time()
    portfolio = rig.sim.portfolio
    assert [r.contract for r in rows] == ["PORTFOLIO", "ES", "SPY"]
    total, es, spy = rows
    assert_row(total, expected_net(portfolio, DEFAULT_ACCOUNT, at))
    assert_row(es, expected_net(portfolio, DEFAULT_ACCOUNT, at, "ES"))
    assert_row(spy, expected_net(portfolio, DEFAULT_ACCOUNT, at, "SPY"))
    assert spy.underlying_price == 600.0
    assert es.underlying_price == 6000.0
    assert spy.dollar_delta == pytest.approx(spy.delta * 600.0)  # type: ignore[operator]
    assert total.legs == 6
    assert total.legs_missing == 0
    assert {r.api_mode for r in rows} == {"PORTAL"}
    assert {r.account for r in rows} == {DEFAULT_ACCOUNT}


async def test_field_7310_is_theta_and_7311_is_vega(clock: FakeClock) -> None:
    # One long year-out call: vega (~+2.3 per point) and theta (~-0.02 per day) differ in
    # sign and by two orders of magnitude, so a swap cannot go unnoticed.
    underlying = Instrument(SPY_CONID, "SPY", "STK")
    call = Instrument(
        CALL,
        "SPY",
        "OPT",
        expiry="20270115",
        strike=100.0,
        right="C",
        multiplier=100.0,
        underlying_conid=SPY_CONID,
    )
    portfolio = Portfolio(
        [DEFAULT_ACCOUNT],
        positions=[Position(DEFAULT_ACCOUNT, call, 3, 1000.0)],
        instruments=[underlying],
        spots={SPY_CONID: 100.0},
        volatilities={SPY_CONID: 0.25},
        as_of=START,
    )
    async with PortalSimulator(portfolio, clock=clock) as sim:
        rig = Rig(sim, make_feed(sim, clock), clock)
        try:
            await rig.connect()
            (row,) = await rig.rows()
            at = rig.last_snapshot_time()
        finally:
            await rig.feed.disconnect()
    expires = call.expires_at()
    assert expires is not None
    bs = black_scholes(100.0, 100.0, years_between(at, expires), 0.25, portfolio.rate, "C")
    assert bs.theta < 0 < bs.vega
    assert row.theta == pytest.approx(300 * bs.theta, rel=1e-12)
    assert row.vega == pytest.approx(300 * bs.vega, rel=1e-12)
    assert row.theta is not None
    assert row.theta < 0


async def test_flat_account_gives_one_zero_row(clock: FakeClock) -> None:
    portfolio = Portfolio([DEFAULT_ACCOUNT], instruments=[Instrument(SPY_CONID, "SPY", "STK")])
    async with PortalSimulator(portfolio, clock=clock) as sim:
        rig = Rig(sim, make_feed(sim, clock), clock)
        try:
            await rig.connect()
            rows = rig.feed.snapshot(clock.now())
        finally:
            await rig.feed.disconnect()
    assert rows is not None
    (row,) = rows
    assert (row.contract, row.delta, row.gamma, row.vega, row.theta, row.legs) == (
        "PORTFOLIO",
        0.0,
        0.0,
        0.0,
        0.0,
        0,
    )


async def test_stale_data_is_not_used(rig: Rig) -> None:
    await rig.connect()
    await rig.rows()
    rig.sim.rate_limit_storm(60.0)
    await rig.run(rig.feed.stale_after + rig.feed.poll_interval)
    assert rig.feed.snapshot(rig.clock.now()) is None
    assert rig.listener.named("rate_limited")
    assert rig.listener.disconnects == []
    await rig.run(120.0)  # the storm ends, the paused endpoints resume
    assert rig.feed.snapshot(rig.clock.now()) is not None


async def test_missing_greeks_are_null_never_zero(rig: Rig) -> None:
    await rig.connect()
    await rig.rows()
    rig.sim.sentinel_greeks(mode="missing", conids=[CALL])
    await rig.run(rig.feed.poll_interval)
    rows = rig.feed.snapshot(rig.clock.now())
    assert rows is not None
    total, es, spy = rows
    for row in (total, spy):
        assert (row.delta, row.gamma, row.vega, row.theta) == (None, None, None, None)
        assert row.legs_missing == 1
    assert es.delta is not None
    assert es.legs_missing == 0
    rig.sim.sentinel_greeks(mode="empty", conids=[CALL])
    await rig.run(rig.feed.poll_interval)
    rows = rig.feed.snapshot(rig.clock.now())
    assert rows is not None
    assert rows[0].theta is None
    assert rows[0].legs_missing == 1


async def test_position_changes_are_followed(rig: Rig) -> None:
    await rig.connect()
    await rig.rows()
    rig.sim.set_position(DEFAULT_ACCOUNT, 800000103, 0)  # close the far call
    rig.sim.set_position(DEFAULT_ACCOUNT, PUT, -5)
    await rig.run(rig.feed.positions_interval + rig.feed.poll_interval)
    rows = rig.feed.snapshot(rig.clock.now())
    assert rows is not None
    assert_row(
        rows[2], expected_net(rig.sim.portfolio, DEFAULT_ACCOUNT, rig.last_snapshot_time(), "SPY")
    )
    assert rows[0].legs == 5
    (change,) = rig.listener.named("positions_changed")
    assert change[3]["removed"] == [800000103]
    assert change[3]["changed"] == [PUT]


# -- accounts -------------------------------------------------------------------------------


async def test_account_selection(clock: FakeClock) -> None:
    portfolio = single_underlying_portfolio(as_of=START)
    other = "DU7654321"
    # The second account holds part of the first's book, halved: shared conids too.
    held = portfolio.positions()
    two = Portfolio(
        [DEFAULT_ACCOUNT, other],
        positions=[
            *held,
            *(attrs.evolve(p, account=other, quantity=p.quantity / 2) for p in held[::2]),
        ],
        spots={SPY_CONID: 600.0},
        as_of=START,
    )
    # One limiter for the three clients, as for one feed reconnecting.
    limiter = RateLimiter(clock)
    async with PortalSimulator(two, clock=clock) as sim:
        rig = Rig(sim, make_feed(sim, clock, limiter=limiter), clock)
        try:
            # No account configured and several: each of them, then all of them under "".
            await rig.connect()
            every = await rig.rows()
            # A conid held in both accounts is one market-data subscription.
            wanted = rig.feed._wanted_conids()
        finally:
            await rig.feed.disconnect()
        at = rig.last_snapshot_time()
        nets = [r for r in every if r.contract == "PORTFOLIO"]
        assert [r.account for r in nets] == [DEFAULT_ACCOUNT, other, ""]
        for row in nets[:2]:
            assert_row(row, expected_net(two, row.account, at))
        for greek in ("delta", "gamma", "vega", "theta"):
            total = getattr(nets[0], greek) + getattr(nets[1], greek)
            assert getattr(nets[2], greek) == pytest.approx(total, rel=1e-9, abs=1e-9)
        assert wanted == sorted({p.conid for p in held} | {SPY_CONID})
        wrong = Rig(sim, make_feed(sim, clock, account="U0000001", limiter=limiter), clock)
        with pytest.raises(AccountSelectionError, match="U0000001"):
            await wrong.connect()
        await wrong.feed.disconnect()
        chosen = Rig(sim, make_feed(sim, clock, account=DEFAULT_ACCOUNT, limiter=limiter), clock)
        try:
            await chosen.connect()
            rows = await chosen.rows()
        finally:
            await chosen.feed.disconnect()
    assert chosen.feed.account == DEFAULT_ACCOUNT
    assert rows[0].account == DEFAULT_ACCOUNT


def test_from_settings_reads_the_portal_settings(tmp_path: Path) -> None:
    ca = tmp_path / "gateway.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_settings(
        {
            "IB_API_MODE": "PORTAL",
            "IBKR_GATEWAY_URL": "https://localhost:5001/",
            "IBKR_GATEWAY_CA": str(ca),
            "IBKR_TICKLE_INTERVAL": "45",
            "IB_ACCOUNT": "DU5",
        },
        use_dotenv=False,
    )
    clock = FakeClock()
    feed = PortalFeed.from_settings(settings, clock)
    assert feed.gateway_url == "https://localhost:5001/v1/api"
    assert feed.account == "DU5"
    assert feed.ca_path == str(ca)
    assert feed.verify_tls is True
    assert feed.tickle_interval == 45.0
    assert feed.mode == "PORTAL"
    unverified = PortalFeed.from_settings(
        load_settings({"IBKR_VERIFY_TLS": "false"}, use_dotenv=False), clock
    )
    assert unverified.verify_tls is False
    assert unverified.account is None
    assert unverified.ca_path is None


def test_api_root() -> None:
    assert api_root("https://127.0.0.1:5000/v1/api/") == "https://127.0.0.1:5000/v1/api"
    with pytest.raises(ValueError, match="https"):
        api_root("localhost:5000")


# -- session --------------------------------------------------------------------------------


async def test_session_stays_alive_past_the_idle_timeout(rig: Rig) -> None:
    await rig.connect()
    await rig.run(rig.sim.idle_timeout + 120.0)
    assert rig.sim.authenticated
    assert rig.listener.disconnects == []
    assert 7 <= rig.sim.count(TICKLE) <= 9  # about once a minute


async def test_expired_session_is_noticed_and_recovered_with_ssodh_init(rig: Rig) -> None:
    await rig.connect()
    await rig.rows()
    rig.sim.expire_session()
    await rig.run(rig.feed.tickle_interval)
    # The tickle or the poll notices first, whichever runs first; it is said once.
    assert len(rig.listener.disconnects) == 1
    assert not rig.feed.connected
    assert rig.feed.snapshot(rig.clock.now()) is None
    await rig.feed.disconnect()
    await rig.connect()
    assert rig.sim.count(SSODH_INIT) == 1
    assert await rig.rows()
    assert rig.listener.named("needs_login") == []


async def test_nightly_logout_then_ssodh_init(rig: Rig) -> None:
    await rig.connect()
    rig.sim.nightly_logout(needs_human=False)
    await rig.run(rig.feed.tickle_interval)
    assert rig.listener.disconnects
    await rig.feed.disconnect()
    await rig.connect()
    assert await rig.rows()


async def test_needs_human_login_episode(rig: Rig) -> None:
    await rig.connect()
    rig.sim.nightly_logout(needs_human=True)
    await rig.run(rig.feed.tickle_interval)
    assert "401" in rig.listener.disconnects[0]
    await rig.feed.disconnect()
    before = rig.sim.count()
    # The Bridge's back-off: attempts a minute apart, ten of them.
    for _ in range(10):
        with pytest.raises(NeedsLoginError):
            await rig.connect()
        await rig.feed.disconnect()
        await rig.run(60.0)
    needs = rig.listener.named("needs_login")
    assert len(needs) == 1  # once per episode
    assert needs[0][1] == "error"
    assert rig.feed.needs_login
    # Gentle: one auth-status request per attempt, nothing else.
    assert rig.sim.count() - before == 10
    assert rig.sim.count(SSODH_INIT) == rig.sim.count(REAUTHENTICATE) == 0
    rig.sim.human_login()
    await rig.connect()
    assert not rig.feed.needs_login
    assert rig.listener.named("login_restored")
    assert await rig.rows()


async def test_needs_human_login_when_reauthentication_does_not_help(rig: Rig) -> None:
    await rig.connect()
    rig.sim.nightly_logout(needs_human=True, sso_expired=False)
    await rig.feed.disconnect()
    status_before = rig.sim.count(AUTH_STATUS)
    attempts: list[str] = []
    for _ in range(8):
        try:
            await rig.connect()
        except GatewayError as exc:
            attempts.append(type(exc).__name__)
        await rig.feed.disconnect()
        await rig.run(10.0)
    # Re-authentication is triggered once and given its grace period; then only a human
    # can help, which is said once.
    assert attempts[0] == "GatewayError"
    assert attempts[-1] == "NeedsLoginError"
    assert rig.sim.count(REAUTHENTICATE) == 1
    assert len(rig.listener.named("needs_login")) == 1
    assert rig.sim.count(AUTH_STATUS) - status_before == 8
    rig.sim.human_login(brokerage=False)
    await rig.connect()
    assert await rig.rows()


async def test_competing_login_is_not_taken_over(rig: Rig) -> None:
    await rig.connect()
    rig.sim.competing(90.0)
    await rig.run(rig.feed.tickle_interval)
    assert "competing" in rig.listener.disconnects[0]
    await rig.feed.disconnect()
    with pytest.raises(GatewayError, match="competing"):
        await rig.connect()
    assert rig.sim.count(SSODH_INIT) == 0  # never competes the other login away
    await rig.feed.disconnect()
    await rig.run(60.0)
    await rig.connect()
    assert await rig.rows()


async def test_probe_times_out_on_a_frozen_gateway(rig: Rig) -> None:
    await rig.connect()
    await rig.drive(rig.feed.probe())
    rig.sim.freeze()
    probe = asyncio.ensure_future(rig.feed.probe())
    # Up to 2 s for a /tickle token (the probe just before took it), then the timeout.
    await rig.run(rig.feed.request_timeout + 2.5)
    with pytest.raises(TimeoutError):
        await probe


# -- robustness -----------------------------------------------------------------------------


async def test_garbage_and_slow_answers_do_not_crash_the_feed(rig: Rig) -> None:
    await rig.connect()
    await rig.rows()
    rig.sim.garbage(70.0)
    await rig.run(70.0)  # covers a positions re-read and a tickle
    garbage = rig.listener.named("garbage")
    assert {e[3]["endpoint"] for e in garbage} == {SNAPSHOT, POSITIONS, TICKLE}
    assert rig.listener.disconnects == []
    rig.sim.slow(25.0)
    await rig.run(40.0)
    assert rig.listener.named("gateway_error")
    await rig.run(10.0)
    assert rig.feed.snapshot(rig.clock.now()) is not None
    assert rig.listener.disconnects == []


async def test_the_client_never_exceeds_the_limits(rig: Rig) -> None:
    async def prober() -> None:
        # Much more eager than the Bridge: a probe every second.
        while True:
            await rig.clock.sleep(1.0)
            await rig.feed.probe()

    for _ in range(3):  # reconnects in quick succession hit /portfolio/accounts' 5 s limit
        await rig.connect()
    task = asyncio.ensure_future(prober())
    try:
        await rig.run(180.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    sim = rig.sim
    assert sim.count(status=429) == 0
    assert sim.rate_limit_violations == 0
    assert sim.max_in_window(1.0) <= 10
    assert sim.max_in_window(1.0, SNAPSHOT) <= 10
    assert sim.max_in_window(1.0, TICKLE) <= 1
    assert sim.max_in_window(5.0, PORTFOLIO_ACCOUNTS) <= 1
    assert sim.count(SNAPSHOT) >= 80  # it did poll all along
    assert sim.count(POSITIONS) >= 3


# -- the rate limiter -----------------------------------------------------------------------


async def test_token_bucket_spacing_and_backoff() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock, global_limit=Limit(rate=5, burst=4), limits={"t": Limit(0.5, 1)})
    assert limiter.try_acquire("t")
    assert not limiter.try_acquire("t")
    assert limiter.wait_time("t") == pytest.approx(2.0)
    await clock.advance(2.0)
    assert limiter.try_acquire("t")
    pause = limiter.penalize("t")
    assert pause == limiter.backoff_initial
    assert limiter.penalize("t") == 2 * limiter.backoff_initial
    assert limiter.paused("t")
    limiter.succeeded("t")
    assert limiter.penalize("t") == limiter.backoff_initial
    # The global bucket spaces other endpoints too.
    taken = sum(limiter.try_acquire(f"e{i}") for i in range(10))
    assert taken == 3  # 4 saved up, minus the one "t" just took


def test_portal_limits_stay_under_the_gateway_limits() -> None:
    gateway = {
        "snapshot": (10, 1.0),
        "tickle": (1, 1.0),
        "portfolio_accounts": (1, 5.0),
        "sso_validate": (1, 60.0),
    }
    for endpoint, (count, window) in gateway.items():
        assert PORTAL_LIMITS[endpoint].max_in(window) <= count, endpoint
    limit = RateLimiter().global_limit
    assert limit is not None
    assert limit.max_in(1.0) < 10


# -- with the Bridge ------------------------------------------------------------------------


async def test_bridge_in_portal_mode_writes_rows_and_waits_for_a_human_login(
    db: TestDatabase, tmp_path: Path, clock: FakeClock
) -> None:
    portfolio = single_underlying_portfolio(as_of=START)
    async with PortalSimulator(portfolio, clock=clock) as sim:
        assert sim.ca_path is not None
        settings = load_settings(
            {
                "IB_API_MODE": "PORTAL",
                "IBKR_GATEWAY_URL": sim.base_url,
                "IBKR_GATEWAY_CA": sim.ca_path,
                "IB_CONNECT_TIMEOUT": "5",
                "IB_PROBE_INTERVAL": "15",
                "IB_PROBE_TIMEOUT": "2",
                "DATABASE_URL": db.dsn,
                "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
            },
            use_dotenv=False,
        )
        async with Bridge(settings, clock=clock) as bridge:
            feed = bridge._feed
            assert isinstance(feed, PortalFeed)

            def busy() -> int:
                return feed.requests_in_flight + sim.busy

            def state() -> ConnectionState:
                return bridge.connection_state

            await wait_until(lambda: state() is ConnectionState.LIVE)
            await run_for(clock, 15.0, busy)
            await bridge.sink.flush()
            rows = await db.fetch("SELECT * FROM portfolio_greeks ORDER BY id")
            assert len(rows) == 3
            for row in rows:
                want = expected_net(portfolio, DEFAULT_ACCOUNT, row["timestamp"])
                assert row["api_mode"] == "PORTAL"
                assert row["underlying_price"] == 600.0
                for name, value in want.items():
                    # Valued at the last poll, at most one poll period before the row.
                    assert row[name] == pytest.approx(value, rel=1e-6), name

            sim.nightly_logout(needs_human=True)
            await run_for(clock, 15.0, busy)  # the next probe meets a 401
            assert state() is ConnectionState.BACKOFF
            before, refused = sim.count(), sim.count(AUTH_STATUS, status=401)
            await run_for(clock, 600.0, busy)
            # Back-off 5, 10, 20, then every 60 s: one auth-status request per attempt.
            attempts = sim.count() - before
            assert attempts == sim.count(AUTH_STATUS, status=401) - refused
            assert 8 <= attempts <= 13
            await bridge.sink.flush()
            needs = await db.fetch("SELECT * FROM api_logs WHERE event = 'needs_login'")
            assert len(needs) == 1
            assert needs[0]["status"] == "error"
            written = len(await db.fetch("SELECT * FROM portfolio_greeks"))

            sim.human_login()
            await run_for(clock, 75.0, busy)
            assert state() is ConnectionState.LIVE
            await bridge.sink.flush()
            assert len(await db.fetch("SELECT * FROM portfolio_greeks")) > written
            restored = await db.fetch("SELECT * FROM api_logs WHERE event = 'login_restored'")
            assert len(restored) == 1
