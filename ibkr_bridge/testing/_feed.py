"""Test doubles around the Bridge: a scripted feed, polling helper, Greeks recomputed by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.feeds.protocol import FeedListener

if TYPE_CHECKING:
    from ibkr_bridge.sim.portfolio import Portfolio


async def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
) -> None:
    """Poll ``condition`` until it holds; raise TimeoutError (with no timing claim) if not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {condition}")
        await asyncio.sleep(interval)


def _one_portfolio_row(now: datetime, n: int) -> list[GreeksRow]:
    return [GreeksRow(timestamp=now, account="DU1", api_mode="SOCKET", delta=float(n))]


@attrs.define
class ScriptedFeed:
    """A :class:`~ibkr_bridge.feeds.protocol.Feed` that does what the test says.

    ``connect()`` fails with ``ConnectionRefusedError`` for each message left in
    ``fail_next``, else succeeds; ``drop()`` reports a lost connection; ``ready=False``
    makes ``snapshot()`` return None (no trustworthy state yet). ``rows(now, n)`` makes the
    n-th snapshot's rows (default: one PORTFOLIO row whose delta is n).
    """

    mode: str = "SOCKET"
    fail_next: list[str] = attrs.field(factory=list)
    rows: Callable[[datetime, int], list[GreeksRow]] = _one_portfolio_row
    connects: int = 0
    snapshots: int = 0
    listener: FeedListener | None = None
    connected: bool = False
    ready: bool = True

    @property
    def account(self) -> str | None:
        return "DU1"

    def set_listener(self, listener: FeedListener) -> None:
        self.listener = listener

    async def connect(self) -> None:
        self.connects += 1
        if self.fail_next:
            raise ConnectionRefusedError(self.fail_next.pop(0))
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False

    async def probe(self) -> None:
        return None

    async def resubscribe(self) -> None:
        return None

    def snapshot(self, now: datetime) -> list[GreeksRow] | None:
        if not (self.connected and self.ready):
            return None
        self.snapshots += 1
        return self.rows(now, self.snapshots)

    def drop(self, reason: str = "socket closed") -> None:
        """The connection is lost (as a Gateway restart would do)."""
        self.connected = False
        if self.listener is not None:
            self.listener.feed_disconnected(reason)


def expected_net_greeks(
    portfolio: Portfolio, account: str, at: datetime, symbol: str | None = None
) -> dict[str, float]:
    """Net delta/gamma/vega/theta of ``account`` at ``at``, recomputed by hand.

    Sum of position x multiplier x per-share model Greek (Black-Scholes, Black-76 for FOP)
    over option legs, plus
    shares (stock) and quantity x multiplier (futures) for delta; only legs of the
    underlying ``symbol`` when given. Uses nothing of the bridge's aggregation.
    """
    from ibkr_bridge.sim.portfolio import model_greeks, years_between

    net = {"delta": 0.0, "gamma": 0.0, "vega": 0.0, "theta": 0.0}
    for pos in portfolio.positions(account):
        inst = pos.instrument
        if symbol is not None and inst.symbol != symbol:
            continue
        if not inst.is_option:
            net["delta"] += pos.quantity * (inst.multiplier if inst.sec_type == "FUT" else 1.0)
            continue
        expires = inst.expires_at()
        if inst.strike is None or inst.right is None or expires is None:
            raise ValueError(f"option {inst.conid} lacks strike, right or expiry")
        underlying = inst.underlying_conid if inst.underlying_conid is not None else inst.conid
        g = model_greeks(
            inst.sec_type,
            portfolio.spot(underlying),
            inst.strike,
            years_between(at, expires),
            portfolio.volatility(inst.conid),
            portfolio.rate,
            inst.right,
        )
        size = pos.quantity * inst.multiplier
        net["delta"] += size * g.delta
        net["gamma"] += size * g.gamma
        net["vega"] += size * g.vega
        net["theta"] += size * g.theta
    return net
