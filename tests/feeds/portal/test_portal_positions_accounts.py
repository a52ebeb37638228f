"""Several accounts in PORTAL mode: a conid held in two accounts is followed in each.

A change in the second account only, of a conid the first also holds, is a
``positions_changed``; ``PortalFeed.positions`` shows that conid once with the accounts'
summed quantity and ``positions_by_account`` each account's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ibkr_bridge.core.clock import FakeClock
from ibkr_bridge.sim.portal import PortalSimulator
from ibkr_bridge.sim.portfolio import (
    DEFAULT_ACCOUNT,
    SECOND_ACCOUNT,
    SPY_CONID,
    two_account_portfolio,
)
from tests.feeds.portal.test_portal_feed import Rig, assert_row, expected_net, make_feed
from tests.sim.portal.test_portal_sim import START

CALL_NEAR = 800000101  # 2 in the first account, 3 in the second


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=START)


@pytest.fixture
async def rig(clock: FakeClock) -> AsyncIterator[Rig]:
    async with PortalSimulator(two_account_portfolio(as_of=START), clock=clock) as sim:
        feed = make_feed(sim, clock)
        try:
            yield Rig(sim, feed, clock)
        finally:
            await feed.disconnect()


def quantities(rig: Rig, conid: int) -> tuple[float, dict[str, float]]:
    positions = rig.feed.positions
    assert positions is not None
    by_account = rig.feed.positions_by_account.items()
    each = {a: held[conid].quantity for a, held in by_account if conid in held}
    return positions[conid].quantity, each


async def test_shared_conids_show_the_sum_and_each_account(rig: Rig) -> None:
    await rig.connect()
    await rig.rows()
    assert quantities(rig, CALL_NEAR) == (5.0, {DEFAULT_ACCOUNT: 2.0, SECOND_ACCOUNT: 3.0})
    assert quantities(rig, SPY_CONID) == (50.0, {DEFAULT_ACCOUNT: 100.0, SECOND_ACCOUNT: -50.0})
    book = rig.sim.portfolio
    for account in (DEFAULT_ACCOUNT, SECOND_ACCOUNT):
        held = {p.instrument.conid: p.quantity for p in book.positions(account)}
        assert {c: p.quantity for c, p in rig.feed.positions_by_account[account].items()} == held


async def test_a_change_in_the_second_account_only_is_followed(rig: Rig) -> None:
    await rig.connect()
    await rig.rows()
    assert rig.listener.named("positions_changed") == []
    rig.sim.set_position(SECOND_ACCOUNT, CALL_NEAR, 7.0)
    await rig.run(rig.feed.positions_interval + rig.feed.poll_interval)
    (change,) = rig.listener.named("positions_changed")
    assert change[3] == {
        "added": [],
        "removed": [],
        "changed": [CALL_NEAR],
        "accounts": [SECOND_ACCOUNT],
    }
    assert quantities(rig, CALL_NEAR) == (9.0, {DEFAULT_ACCOUNT: 2.0, SECOND_ACCOUNT: 7.0})
    rows = rig.feed.snapshot(rig.clock.now())
    assert rows is not None
    at = rig.last_snapshot_time()
    nets = {r.account: r for r in rows if r.contract == "PORTFOLIO"}
    for account in (DEFAULT_ACCOUNT, SECOND_ACCOUNT):
        assert_row(nets[account], expected_net(rig.sim.portfolio, account, at))


async def test_a_move_between_accounts_that_keeps_the_sum_is_a_change(rig: Rig) -> None:
    await rig.connect()
    await rig.rows()
    # 2 + 3 stays 5, but each account's position changed.
    rig.sim.set_position(DEFAULT_ACCOUNT, CALL_NEAR, 1.0)
    rig.sim.set_position(SECOND_ACCOUNT, CALL_NEAR, 4.0)
    await rig.run(rig.feed.positions_interval + rig.feed.poll_interval)
    (change,) = rig.listener.named("positions_changed")
    assert change[3]["changed"] == [CALL_NEAR]
    assert change[3]["accounts"] == [DEFAULT_ACCOUNT, SECOND_ACCOUNT]
    assert quantities(rig, CALL_NEAR) == (5.0, {DEFAULT_ACCOUNT: 1.0, SECOND_ACCOUNT: 4.0})
    # Closed in the second account only: still open in the first, so not "removed".
    rig.sim.set_position(SECOND_ACCOUNT, CALL_NEAR, 0.0)
    await rig.run(rig.feed.positions_interval + rig.feed.poll_interval)
    (_, closed) = rig.listener.named("positions_changed")
    assert closed[3] == {
        "added": [],
        "removed": [],
        "changed": [CALL_NEAR],
        "accounts": [SECOND_ACCOUNT],
    }
    assert CALL_NEAR not in rig.feed.positions_by_account[SECOND_ACCOUNT]
    assert quantities(rig, CALL_NEAR) == (1.0, {DEFAULT_ACCOUNT: 1.0})
