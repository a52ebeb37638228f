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

The parts: :mod:`._codec` and :mod:`._messages` (the wire format), :mod:`._state` (what
the parts share), :mod:`._market` (ticks, Greeks, account pushes), :mod:`._requests`
(request handlers), :mod:`._session` (listener and per-socket loop), :mod:`._faults`
and :mod:`._server` (:class:`TwsSimulator`: lifecycle and introspection).
"""

from __future__ import annotations

from ibkr_bridge.sim.tws._server import TwsSimulator
from ibkr_bridge.sim.tws._state import FARM_MESSAGES, MSG_CLIENT_IN_USE, RequestRecord

__all__ = ["FARM_MESSAGES", "MSG_CLIENT_IN_USE", "RequestRecord", "TwsSimulator"]
