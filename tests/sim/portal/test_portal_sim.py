"""The Client Portal simulator over real HTTPS on loopback: shapes, sessions, limits, faults."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, time
from typing import Any

import aiohttp
import pytest

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim.faults import FaultScriptError
from ibkr_bridge.sim.portal import (
    PAGE_SIZE,
    PORTFOLIO_ACCOUNTS,
    SNAPSHOT,
    SSO_VALIDATE,
    TICKLE,
    PortalSimulator,
    SimLimits,
    format_size,
    parse_portal_fault_script,
)
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    SPY_CONID,
    Instrument,
    Portfolio,
    Position,
    black_scholes,
    default_portfolio,
    years_between,
)

# A Monday, 10:00 New York: regular trading hours.
START = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
CALL = 800000101
PUT = 800000102


# -- helpers shared with test_portal_feed -------------------------------------------------


async def settle(*busy: Callable[[], int]) -> None:
    """Let real IO finish: wait until every ``busy()`` stays 0 for a few loop turns."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 10.0
    quiet = 0
    while quiet < 3:
        await asyncio.sleep(0.0005)
        if any(b() for b in busy):
            quiet = 0
            if loop.time() > give_up:
                raise AssertionError("requests still in flight after 10 s")
        else:
            quiet += 1


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait (real time, briefly) for something the event loop will make true."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 10.0
    while not predicate():
        if loop.time() > give_up:
            raise AssertionError("condition not reached after 10 s")
        await asyncio.sleep(0.0005)


async def run_for(clock: FakeClock, seconds: float, *busy: Callable[[], int]) -> None:
    """Move the clock ``seconds`` ahead, stopping at every sleeper's deadline to let IO finish."""
    end = clock.monotonic() + seconds
    while True:
        await settle(*busy)
        now = clock.monotonic()
        if now >= end:
            return
        deadline = clock.next_deadline()
        target = end if deadline is None else min(end, max(deadline, now))
        await clock.advance(target - now)


class Client:
    """A bare aiohttp client trusting the simulator's certificate."""

    def __init__(self, sim: PortalSimulator, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.session = session

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.sim.url + path, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def ready(self) -> None:
        """The usual start: /iserver/accounts and /portfolio/accounts."""
        assert (await self.call("GET", "/iserver/accounts"))[0] == 200
        assert (await self.call("GET", "/portfolio/accounts"))[0] == 200


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=START)


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[PortalSimulator]:
    async with PortalSimulator(default_portfolio(as_of=START), clock=clock) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: PortalSimulator) -> AsyncIterator[Client]:
    context = ssl.create_default_context(cafile=sim.ca_path)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield Client(sim, session)


# -- TLS ------------------------------------------------------------------------------------


async def test_unknown_certificate_is_refused_by_default(sim: PortalSimulator) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(sim.url + "/tickle")
    assert sim.count(TICKLE) == 0


async def test_certificate_is_trusted_with_its_pem_for_ip_and_localhost(
    sim: PortalSimulator,
) -> None:
    assert sim.url.startswith("https://127.0.0.1:")
    assert sim.url.endswith("/v1/api")
    context = ssl.create_default_context(cafile=sim.ca_path)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        for base in (sim.url, f"https://localhost:{sim.port}/v1/api"):
            async with session.get(base + "/iserver/auth/status") as response:
                assert response.status == 200


# -- shapes ---------------------------------------------------------------------------------


async def test_tickle_shape(client: Client) -> None:
    status, body = await client.call("POST", "/tickle")
    assert status == 200
    assert isinstance(body["session"], str)
    assert body["session"]
    assert isinstance(body["ssoExpires"], int)
    assert body["ssoExpires"] > 0
    assert body["collission"] is False  # IBKR's spelling
    assert isinstance(body["userId"], int)
    assert body["hmds"] == {"error": "no bridge"}
    auth = body["iserver"]["authStatus"]
    assert auth["authenticated"] is True
    assert auth["competing"] is False
    assert auth["connected"] is True
    assert auth["established"] is True
    assert auth["message"] == ""
    assert isinstance(auth["MAC"], str)
    assert set(auth["serverInfo"]) == {"serverName", "serverVersion"}


async def test_auth_status_answers_get_and_post(client: Client) -> None:
    for method in ("GET", "POST"):
        status, body = await client.call(method, "/iserver/auth/status")
        assert status == 200
        assert body["authenticated"] is True
        assert body["connected"] is True
        assert {"competing", "established", "fail", "message", "MAC", "serverInfo"} <= set(body)


async def test_sso_validate_and_logout(client: Client) -> None:
    status, body = await client.call("GET", "/sso/validate")
    assert status == 200
    assert body["RESULT"] is True
    assert body["LOGIN_TYPE"] == 2  # a DU account is paper
    assert body["USER_NAME"] == client.sim.user_name
    assert body["EXPIRES"] > 0
    assert await client.call("POST", "/logout") == (200, {"status": True})
    status, _ = await client.call("POST", "/tickle")
    assert status == 401


async def test_iserver_and_portfolio_accounts(client: Client) -> None:
    status, body = await client.call("GET", "/iserver/accounts")
    assert status == 200
    assert body["accounts"] == [DEFAULT_ACCOUNT]
    assert body["selectedAccount"] == DEFAULT_ACCOUNT
    assert body["isPaper"] is True
    status, body = await client.call("GET", "/portfolio/accounts")
    assert status == 200
    assert [a["accountId"] for a in body] == [DEFAULT_ACCOUNT]
    assert {"id", "accountTitle", "currency", "type"} <= set(body[0])


async def test_positions_shape(client: Client, sim: PortalSimulator) -> None:
    await client.ready()
    status, rows = await client.call("GET", f"/portfolio/{DEFAULT_ACCOUNT}/positions/0")
    assert status == 200
    by_conid = {row["conid"]: row for row in rows}
    assert set(by_conid) == {p.conid for p in sim.portfolio.positions()}
    stock = by_conid[SPY_CONID]
    assert stock["assetClass"] == "STK"
    assert stock["multiplier"] == 0.0
    assert stock["strike"] == "0"
    assert stock["putOrCall"] is None
    assert stock["expiry"] is None
    assert stock["undConid"] == 0
    assert stock["position"] == 100.0
    call = by_conid[CALL]
    assert call["assetClass"] == "OPT"
    assert call["strike"] == "600"
    assert isinstance(call["strike"], str)
    assert call["multiplier"] == 100.0
    assert call["putOrCall"] == "C"
    assert call["undConid"] == SPY_CONID
    assert call["undSym"] == "SPY"
    assert call["ticker"] == "SPY"
    assert call["expiry"] == sim.portfolio.instrument(CALL).expiry
    assert call["currency"] == "USD"
    for key in ("mktPrice", "mktValue", "avgCost", "contractDesc", "acctId"):
        assert key in call
    assert call["mktPrice"] == pytest.approx(sim.portfolio.price(CALL, START))
    fop = by_conid[800000201]
    assert fop["assetClass"] == "FOP"
    assert fop["multiplier"] == 50.0


async def test_positions_are_paged_by_100(clock: FakeClock) -> None:
    spy = Instrument(SPY_CONID, "SPY", "STK")
    options = [
        Instrument(
            900000000 + i,
            "SPY",
            "OPT",
            expiry="20260320",
            strike=500.0 + i,
            right="C",
            multiplier=100.0,
            underlying_conid=SPY_CONID,
        )
        for i in range(149)
    ]
    positions = [Position(DEFAULT_ACCOUNT, spy, 10, 600.0)]
    positions += [Position(DEFAULT_ACCOUNT, o, 1, 100.0) for o in options]
    portfolio = Portfolio([DEFAULT_ACCOUNT], positions=positions, spots={SPY_CONID: 600.0})
    async with PortalSimulator(portfolio, clock=clock) as sim:
        context = ssl.create_default_context(cafile=sim.ca_path)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            client = Client(sim, session)
            await client.ready()
            pages = [
                (await client.call("GET", f"/portfolio/{DEFAULT_ACCOUNT}/positions/{n}"))[1]
                for n in range(3)
            ]
    assert [len(p) for p in pages] == [PAGE_SIZE, 50, 0]
    assert len({row["conid"] for page in pages for row in page}) == 150


async def test_portfolio_accounts_must_precede_positions(client: Client) -> None:
    await client.call("GET", "/iserver/accounts")
    status, body = await client.call("GET", f"/portfolio/{DEFAULT_ACCOUNT}/positions/0")
    assert status == 400
    assert body["statusCode"] == 400
    await client.call("GET", "/portfolio/accounts")
    status, _ = await client.call("GET", "/portfolio/U999/positions/0")
    assert status == 500  # an account the login does not hold


async def test_snapshot_needs_iserver_accounts_first(client: Client) -> None:
    status, body = await client.call(
        "GET", "/iserver/marketdata/snapshot", params={"conids": str(CALL), "fields": "31"}
    )
    assert status == 400
    assert body == {"error": "Bad Request: no bridge", "statusCode": 400}


async def test_snapshot_preflight_then_string_fields(
    client: Client, sim: PortalSimulator, clock: FakeClock
) -> None:
    await client.ready()
    params = {
        "conids": f"{CALL},{SPY_CONID}",
        "fields": "31,84,86,87,7308,7309,7310,7311,7633,6509,6457",
    }
    status, first = await client.call("GET", "/iserver/marketdata/snapshot", params=params)
    assert status == 200
    assert first == [
        {"conid": CALL, "conidEx": str(CALL)},
        {"conid": SPY_CONID, "conidEx": str(SPY_CONID)},
    ]
    await clock.advance(1)
    status, rows = await client.call("GET", "/iserver/marketdata/snapshot", params=params)
    option, stock = rows
    for key in ("31", "84", "86", "87", "7308", "7309", "7310", "7311", "7633", "6509", "6457"):
        assert isinstance(option[key], str), key
    inst = sim.portfolio.instrument(CALL)
    now = sim.clock.now()
    assert inst.strike is not None
    assert inst.right is not None
    expected = black_scholes(
        600.0,
        inst.strike,
        years_between(now, inst.expires_at() or now),
        0.18,
        sim.portfolio.rate,
        inst.right,
    )
    assert float(option["7308"]) == pytest.approx(expected.delta, rel=1e-12)
    assert float(option["7309"]) == pytest.approx(expected.gamma, rel=1e-12)
    assert float(option["7310"]) == pytest.approx(expected.theta, rel=1e-12)
    assert float(option["7311"]) == pytest.approx(expected.vega, rel=1e-12)
    assert float(option["7310"]) < 0 < float(option["7311"])
    assert option["6457"] == str(SPY_CONID)
    assert option["6509"].startswith("R")
    assert option["_updated"] == int(now.timestamp() * 1000)
    assert stock["31"] == "600.00"
    assert "7308" not in stock  # a stock has no option Greeks


async def test_numbers_are_formatted_like_ibkr(clock: FakeClock) -> None:
    assert format_size(950) == "950"
    assert format_size(1300) == "1,300"
    assert format_size(10_200) == "10.2K"
    assert format_size(3_400_000) == "3.4M"
    # Outside regular hours the last price carries the C (previous close) prefix.
    evening = datetime(2026, 1, 5, 23, 0, tzinfo=UTC)
    late = FakeClock(start=evening)
    async with PortalSimulator(default_portfolio(as_of=evening), clock=late) as sim:
        context = ssl.create_default_context(cafile=sim.ca_path)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            client = Client(sim, session)
            await client.ready()
            params = {"conids": str(SPY_CONID), "fields": "31,6509"}
            await client.call("GET", "/iserver/marketdata/snapshot", params=params)
            _, rows = await client.call("GET", "/iserver/marketdata/snapshot", params=params)
    assert rows[0]["31"] == "C600.00"
    assert rows[0]["6509"].startswith("Z")


async def test_empty_post_without_content_length_is_refused(sim: PortalSimulator) -> None:
    context = ssl.create_default_context(cafile=sim.ca_path)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", sim.port, ssl=context, server_hostname="127.0.0.1"
    )
    writer.write(b"POST /v1/api/tickle HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"411"


# -- rate limits ----------------------------------------------------------------------------


async def test_rate_limits_answer_429(
    client: Client, sim: PortalSimulator, clock: FakeClock
) -> None:
    assert (await client.call("POST", "/tickle"))[0] == 200
    assert (await client.call("POST", "/tickle"))[0] == 429
    assert (await client.call("GET", "/portfolio/accounts"))[0] == 200
    assert (await client.call("GET", "/portfolio/accounts"))[0] == 429
    assert (await client.call("GET", "/sso/validate"))[0] == 200
    assert (await client.call("GET", "/sso/validate"))[0] == 429
    sim.reset_rate_limits()
    await clock.advance(1.0)
    # Ten per second globally: the eleventh in the same second is refused.
    statuses = [(await client.call("GET", "/iserver/auth/status"))[0] for _ in range(11)]
    assert statuses == [200] * 10 + [429]
    await clock.advance(1.0)
    assert (await client.call("POST", "/tickle"))[0] == 200
    assert (await client.call("GET", "/portfolio/accounts"))[0] == 200
    await clock.advance(4.0)
    assert (await client.call("GET", "/portfolio/accounts"))[0] == 429  # 1 per 5 s
    await clock.advance(1.0)
    assert (await client.call("GET", "/portfolio/accounts"))[0] == 200
    assert sim.count(status=429) == sim.rate_limit_violations == 5


async def test_snapshot_limit_is_ten_per_second(
    client: Client, sim: PortalSimulator, clock: FakeClock
) -> None:
    await client.ready()
    await clock.advance(1.0)
    params = {"conids": str(CALL), "fields": "31"}
    statuses = [
        (await client.call("GET", "/iserver/marketdata/snapshot", params=params))[0]
        for _ in range(11)
    ]
    assert statuses == [200] * 10 + [429]
    assert sim.max_in_window(1.0, SNAPSHOT) == 11


async def test_repeat_offenders_sit_in_the_penalty_box(clock: FakeClock) -> None:
    limits = SimLimits(penalty_after=3, penalty_seconds=600.0)
    async with PortalSimulator(default_portfolio(as_of=START), clock=clock, limits=limits) as sim:
        context = ssl.create_default_context(cafile=sim.ca_path)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            client = Client(sim, session)
            statuses = [(await client.call("POST", "/tickle"))[0] for _ in range(4)]
            assert statuses == [200, 429, 429, 429]
            assert sim.in_penalty_box
            await clock.advance(300.0)
            assert (await client.call("GET", "/iserver/auth/status"))[0] == 429
            await clock.advance(301.0)
            assert not sim.in_penalty_box
            assert (await client.call("GET", "/iserver/auth/status"))[0] == 200
            sim.penalty_box()
            assert (await client.call("GET", "/iserver/auth/status"))[0] == 429
            sim.reset_rate_limits()
            assert (await client.call("GET", "/iserver/auth/status"))[0] == 200


# -- session --------------------------------------------------------------------------------


async def test_session_times_out_without_requests(
    client: Client, sim: PortalSimulator, clock: FakeClock
) -> None:
    await client.ready()
    # A tickle every five minutes keeps it alive...
    for _ in range(3):
        await clock.advance(300.0)
        _, body = await client.call("POST", "/tickle")
        assert body["iserver"]["authStatus"]["authenticated"] is True
    # ...six minutes of silence do not.
    await clock.advance(361.0)
    _, auth = await client.call("POST", "/iserver/auth/status")
    assert auth["authenticated"] is False
    assert auth["connected"] is True
    status, body = await client.call(
        "GET", "/iserver/marketdata/snapshot", params={"conids": str(CALL), "fields": "31"}
    )
    assert (status, body["error"]) == (400, "Init session first")
    _, init = await client.call(
        "POST", "/iserver/auth/ssodh/init", json={"publish": True, "compete": True}
    )
    assert init["authenticated"] is True
    # A new brokerage session: /iserver/accounts is needed again.
    status, body = await client.call(
        "GET", "/iserver/marketdata/snapshot", params={"conids": str(CALL), "fields": "31"}
    )
    assert body["error"] == "Bad Request: no bridge"


async def test_nightly_logout_recovers_with_ssodh_init(
    client: Client, sim: PortalSimulator
) -> None:
    sim.nightly_logout(needs_human=False)
    _, body = await client.call("POST", "/tickle")
    assert body["iserver"]["authStatus"]["authenticated"] is False
    assert (await client.call("GET", "/iserver/accounts"))[0] == 401
    _, init = await client.call("POST", "/iserver/auth/ssodh/init", json={"publish": True})
    assert init["authenticated"] is True
    assert (await client.call("GET", "/iserver/accounts"))[0] == 200


async def test_reauthenticate_brings_the_session_back_later(
    client: Client, sim: PortalSimulator, clock: FakeClock
) -> None:
    sim.expire_session()
    assert await client.call("POST", "/iserver/reauthenticate") == (200, {"message": "triggered"})
    await clock.advance(sim.reauth_delay - 1)
    assert (await client.call("GET", "/iserver/auth/status"))[1]["authenticated"] is False
    await clock.advance(1.0)
    assert (await client.call("GET", "/iserver/auth/status"))[1]["authenticated"] is True


async def test_needs_human_when_sso_expired(client: Client, sim: PortalSimulator) -> None:
    sim.nightly_logout(needs_human=True)
    assert (await client.call("POST", "/tickle"))[0] == 401
    assert (await client.call("POST", "/iserver/auth/status"))[0] == 401
    assert (await client.call("POST", "/iserver/auth/ssodh/init", json={}))[0] == 401
    assert (await client.call("POST", "/iserver/reauthenticate"))[0] == 401
    sim.human_login()
    assert (await client.call("POST", "/iserver/auth/status"))[1]["authenticated"] is True


async def test_needs_human_without_401(
    client: Client, sim: PortalSimulator, clock: FakeClock
) -> None:
    sim.nightly_logout(needs_human=True, sso_expired=False)
    _, init = await client.call("POST", "/iserver/auth/ssodh/init", json={"compete": True})
    assert init["authenticated"] is False
    assert init["fail"]
    await client.call("POST", "/iserver/reauthenticate")
    await clock.advance(sim.reauth_delay * 3)
    assert (await client.call("GET", "/iserver/auth/status"))[1]["authenticated"] is False
    sim.human_login(brokerage=False)
    _, init = await client.call("POST", "/iserver/auth/ssodh/init", json={"compete": True})
    assert init["authenticated"] is True


async def test_competing_session(client: Client, sim: PortalSimulator, clock: FakeClock) -> None:
    sim.competing(30.0)
    _, body = await client.call("POST", "/tickle")
    assert body["collission"] is True
    assert body["iserver"]["authStatus"]["competing"] is True
    assert body["iserver"]["authStatus"]["authenticated"] is False
    _, init = await client.call("POST", "/iserver/auth/ssodh/init", json={"compete": False})
    assert init["competing"] is True
    assert init["authenticated"] is False
    await clock.advance(30.0)
    _, auth = await client.call("GET", "/iserver/auth/status")
    assert auth["competing"] is False
    assert auth["authenticated"] is False
    _, init = await client.call("POST", "/iserver/auth/ssodh/init", json={"compete": False})
    assert init["authenticated"] is True


# -- faults ---------------------------------------------------------------------------------


async def test_slow_answers_503_after_the_delay(
    client: Client, sim: PortalSimulator, clock: FakeClock
) -> None:
    sim.slow(60.0)
    task = asyncio.create_task(client.call("POST", "/tickle"))
    await wait_until(lambda: sim.in_flight > 0)
    await clock.advance(9.0)
    await settle()
    assert not task.done()
    await clock.advance(1.0)
    status, _ = await task
    assert status == 503


async def test_freeze_never_answers(client: Client, sim: PortalSimulator, clock: FakeClock) -> None:
    sim.freeze(30.0)
    task = asyncio.create_task(client.call("POST", "/tickle"))
    await wait_until(lambda: sim.frozen > 0)
    await clock.advance(120.0)
    await settle()
    assert not task.done()
    assert sim.count(TICKLE, status=None) == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # After the window, new requests are answered again.
    assert (await client.call("GET", "/iserver/auth/status"))[0] == 200


async def test_garbage_answers(client: Client, sim: PortalSimulator, clock: FakeClock) -> None:
    await client.ready()
    sim.garbage(10.0)
    bodies = []
    for _ in range(5):
        status, body = await client.call("GET", "/iserver/auth/status")
        assert status == 200
        bodies.append(body)
    assert not any(isinstance(b, dict) and "authenticated" in b for b in bodies)
    assert any(isinstance(b, str) and b.startswith("<html>") for b in bodies)
    await clock.advance(10.0)
    assert "authenticated" in (await client.call("GET", "/iserver/auth/status"))[1]


async def test_storm_answers_429_without_counting_violations(
    client: Client, sim: PortalSimulator, clock: FakeClock
) -> None:
    sim.rate_limit_storm(5.0)
    assert (await client.call("GET", "/iserver/auth/status"))[0] == 429
    assert sim.rate_limit_violations == 0
    await clock.advance(5.0)
    assert (await client.call("GET", "/iserver/auth/status"))[0] == 200


@pytest.mark.parametrize(("mode", "expected"), [("missing", None), ("empty", ""), ("na", "N/A")])
async def test_sentinel_greeks(
    client: Client, sim: PortalSimulator, mode: str, expected: str | None
) -> None:
    await client.ready()
    params = {"conids": f"{CALL},{PUT}", "fields": "31,7308,7309,7310,7311"}
    await client.call("GET", "/iserver/marketdata/snapshot", params=params)
    sim.sentinel_greeks(mode=mode, conids=[CALL])
    _, (call, put) = await client.call("GET", "/iserver/marketdata/snapshot", params=params)
    for key in ("7308", "7309", "7310", "7311"):
        assert call.get(key) == expected
        assert float(put[key]) != 0
    assert "31" in call


async def test_position_changes_show_in_positions(client: Client, sim: PortalSimulator) -> None:
    await client.ready()
    sim.set_position(DEFAULT_ACCOUNT, PUT, -7)
    sim.remove_position(DEFAULT_ACCOUNT, CALL)
    _, rows = await client.call("GET", f"/portfolio/{DEFAULT_ACCOUNT}/positions/0")
    by_conid = {row["conid"]: row for row in rows}
    assert by_conid[PUT]["position"] == -7
    assert CALL not in by_conid


async def test_fault_script_runs_on_the_sim_clock(
    client: Client, sim: PortalSimulator, clock: FakeClock
) -> None:
    steps = parse_portal_fault_script(
        [
            {"at": 20, "fault": "human_login"},
            {"at": 5, "fault": "nightly_logout", "needs_human": True},
            {"at": 30, "fault": "set_spot", "conid": SPY_CONID, "price": 610.0},
        ]
    )
    assert [s.fault for s in steps] == ["nightly_logout", "human_login", "set_spot"]
    sim.run_faults(steps)
    await clock.advance(6.0)
    assert (await client.call("GET", "/iserver/auth/status"))[0] == 401
    await clock.advance(15.0)
    assert (await client.call("GET", "/iserver/auth/status"))[0] == 200
    await clock.advance(10.0)
    assert sim.portfolio.spot(SPY_CONID) == 610.0


@pytest.mark.parametrize(
    "script",
    [
        {"at": 1, "fault": "freeze"},
        [{"at": -1, "fault": "freeze"}],
        [{"at": 1, "fault": "explode"}],
        [{"at": 1, "fault": "freeze", "minutes": 3}],
        [{"at": 1, "fault": "set_spot", "conid": 1}],
        [{"at": 1, "fault": "sentinel_greeks", "mode": "minus3"}],
        [{"at": 1, "fault": "nightly_logout", "needs_human": "yes"}],
    ],
)
def test_bad_fault_scripts_are_refused(script: Any) -> None:
    with pytest.raises(FaultScriptError):
        parse_portal_fault_script(script)


async def test_nightly_reset_and_random_walk_on_the_sim_clock(clock: FakeClock) -> None:
    portfolio = default_portfolio(as_of=START)
    async with PortalSimulator(
        portfolio,
        clock=clock,
        nightly_reset=time(23, 45),
        nightly_needs_human=True,
        idle_timeout=1e9,
        walk_interval=600.0,
    ) as sim:
        context = ssl.create_default_context(cafile=sim.ca_path)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            client = Client(sim, session)
            # START is 10:00 New York; 23:44 is 13 h 44 min later.
            await clock.advance(13 * 3600 + 44 * 60)
            assert (await client.call("GET", "/iserver/auth/status"))[0] == 200
            await clock.advance(120.0)
            assert (await client.call("GET", "/iserver/auth/status"))[0] == 401
            sim.human_login()
            assert (await client.call("GET", "/iserver/auth/status"))[0] == 200
    assert portfolio.spot(SPY_CONID) != 600.0  # the underlyings walked


async def test_request_log_counts_every_endpoint(client: Client, sim: PortalSimulator) -> None:
    await client.call("POST", "/tickle")
    await client.ready()
    await client.call("GET", "/iserver/marketdata/snapshot", params={"conids": str(CALL)})
    assert sim.counts[TICKLE] == 1
    assert sim.counts[PORTFOLIO_ACCOUNTS] == 1
    assert sim.counts[SNAPSHOT] == 1
    assert sim.count(SSO_VALIDATE) == 0
    assert [r.endpoint for r in sim.requests] == [
        TICKLE,
        "iserver_accounts",
        PORTFOLIO_ACCOUNTS,
        SNAPSHOT,
    ]
    assert all(r.status == 200 for r in sim.requests)
