"""PORTAL mode never disturbs the trader's session, and a real -2.0 Greek is data.

* ``/iserver/auth/ssodh/init`` is always sent with ``compete: false`` (IBKR documents
  ``compete: true`` as disconnecting the user's other brokerage sessions), on every path
  that starts a brokerage session: an expired session, the end of a competing login, a
  nightly logout; the competing state is reported and waited out.
* A theta of exactly ``"-2.000"`` in a Client Portal snapshot is a real value (that API
  marks "not computed" by leaving the field out or empty), so the stored PORTFOLIO theta
  is the sum with it, not NULL.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from ibkr_bridge import ConnectionState
from ibkr_bridge.core.errors import GatewayError
from ibkr_bridge.core.greeks import Leg, aggregate
from ibkr_bridge.sim.portal import SSODH_INIT
from ibkr_bridge.sim.portfolio import DEFAULT_ACCOUNT
from ibkr_bridge.testing import wait_until
from tests.e2e.test_portal_e2e import World, world  # noqa: F401  (the fixture)
from tests.sim.portal.test_portal_sim import START

from .test_portal_feed import Rig, clock, expected_net, rig  # noqa: F401  (fixtures)

# -- compete: false ---------------------------------------------------------------------------


async def test_expired_session_is_restarted_without_competing(rig: Rig) -> None:  # noqa: F811
    # The path that used to send compete: true (not authenticated, not competing).
    await rig.connect()
    await rig.rows()
    rig.sim.expire_session()
    await rig.run(rig.feed.tickle_interval)
    await rig.feed.disconnect()
    await rig.connect()
    assert rig.sim.compete_flags == [False]
    assert await rig.rows()


async def test_competing_login_is_waited_out_then_joined_without_competing(
    rig: Rig,  # noqa: F811
) -> None:
    await rig.connect()
    rig.sim.competing(90.0)
    await rig.run(rig.feed.tickle_interval)
    assert "competing" in rig.listener.disconnects[0]
    await rig.feed.disconnect()
    with pytest.raises(GatewayError, match="competing"):
        await rig.connect()
    assert rig.listener.named("competing"), "the competing state is reported"
    await rig.feed.disconnect()
    await rig.run(60.0)  # the other login ends
    await rig.connect()
    assert rig.sim.count(SSODH_INIT) == len(rig.sim.compete_flags) >= 1
    assert set(rig.sim.compete_flags) == {False}
    assert await rig.rows()


@pytest.mark.parametrize(
    "fault",
    ["expire_session", "nightly_logout", "competing"],
)
async def test_bridge_never_sends_compete_true(world: World, fault: str) -> None:  # noqa: F811
    await world.run(15.0)
    if fault == "expire_session":
        world.sim.expire_session()
    elif fault == "nightly_logout":
        world.sim.nightly_logout(needs_human=False, sso_expired=False)
    else:
        world.sim.competing(120.0)
    await world.run(300.0)
    await wait_until(lambda: world.state is ConnectionState.LIVE)
    assert world.sim.compete_flags, "no brokerage session was started: the test proved nothing"
    assert set(world.sim.compete_flags) == {False}


# -- "-2.000" is data in PORTAL -----------------------------------------------------------------


def test_minus_two_is_a_sentinel_only_for_ib_async_legs() -> None:
    def leg(*, ib_sentinels: bool) -> Leg:
        return Leg(
            conid=1,
            symbol="SPY",
            sec_type="OPT",
            quantity=3,
            multiplier=100,
            delta=0.5,
            gamma=0.01,
            vega=0.2,
            theta=-2.0,
            ib_sentinels=ib_sentinels,
        )

    kw = {"account": "DU1", "timestamp": START, "api_mode": "X"}
    (socket_row,) = aggregate([leg(ib_sentinels=True)], **kw)  # type: ignore[arg-type]
    (portal_row,) = aggregate([leg(ib_sentinels=False)], **kw)  # type: ignore[arg-type]
    assert socket_row.theta is None
    assert socket_row.legs_missing == 1
    assert portal_row.theta == -600.0
    assert portal_row.legs_missing == 0


async def test_portal_theta_of_minus_two_is_stored(world: World) -> None:  # noqa: F811
    # Long options only, so the -2.0 thetas cannot sum to zero.
    for p in world.sim.portfolio.positions(DEFAULT_ACCOUNT):
        if p.instrument.is_option and p.quantity < 0:
            world.sim.remove_position(DEFAULT_ACCOUNT, p.instrument.conid)
    options = [p for p in world.sim.portfolio.positions(DEFAULT_ACCOUNT) if p.instrument.is_option]
    want_theta = math.fsum(p.quantity * p.instrument.multiplier * -2.0 for p in options)
    assert want_theta < 0
    world.sim.fixed_greeks({"theta": "-2.000"})  # every option's theta, as the gateway writes
    fixed_at = world.clock.now()
    await world.run(90.0)  # past the positions re-read (60 s)
    rows = [r for r in await world.rows() if r["timestamp"] > fixed_at + timedelta(seconds=65)]
    assert len(rows) >= 3
    for r in rows:
        assert r["contract"] == "PORTFOLIO"
        assert r["theta"] is not None, "a real -2.0 theta was taken for IB's sentinel"
        assert r["theta"] == pytest.approx(want_theta, rel=1e-12)
        assert r["legs_missing"] == 0
        # The other Greeks are still the recomputation at one of the recent poll instants.
        candidates = [
            expected_net(
                world.sim.portfolio, DEFAULT_ACCOUNT, r["timestamp"] - timedelta(seconds=j)
            )
            for j in range(7)
        ]
        assert any(
            all(r[n] == pytest.approx(c[n], rel=1e-9) for n in ("delta", "gamma", "vega"))
            for c in candidates
        )
