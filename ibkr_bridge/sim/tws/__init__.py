"""An IB Gateway simulator speaking the real TWS API wire protocol.

Unmodified TWS API clients (ib_async, IBKR's own ibapi) connect to :class:`TwsSimulator`
as to a Gateway: version handshake, ``startApi``, managed accounts, positions, account
updates, contract details and streaming market data with model Greeks computed by the
:class:`~ibkr_bridge.sim.portfolio.Portfolio`. Time comes from an injectable
:class:`~ibkr_bridge.core.clock.Clock`, so tests drive streaming and faults with a FakeClock.

Faults that real Gateways show (restart, nightly reset with 1100/1101/1102, refused
connections, a hung Gateway, garbage on the socket, IBKR's "not computed" Greek
sentinels, positions changing mid-session) can be triggered from tests or from a fault
script (:mod:`ibkr_bridge.sim.faults`).

The parts: ``_codec`` and ``_messages`` (the wire format), then one class per module in
a single inheritance chain, ``_state.GatewayState`` (what all parts share) →
``_market.MarketData`` (ticks, Greeks, account pushes) → ``_requests.Requests`` (request
handlers) → ``_session.Sessions`` (listener and per-socket loop) → ``_faults.Faults`` →
``_server.TwsSimulator`` (lifecycle and introspection). One object keeps the Gateway's
state in one place, and a test's misbehaving Gateway still subclasses
:class:`TwsSimulator` and overrides ``_dispatch`` or ``_handlers``.
"""

from __future__ import annotations

from ibkr_bridge.sim.tws._server import TwsSimulator
from ibkr_bridge.sim.tws._state import FARM_MESSAGES, MSG_CLIENT_IN_USE, RequestRecord

__all__ = ["FARM_MESSAGES", "MSG_CLIENT_IN_USE", "RequestRecord", "TwsSimulator"]
