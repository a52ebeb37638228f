"""Helpers for testing ibkr-bridge and apps built on it (public API, used by our own tests).

- :class:`FakeClock`: move time by hand instead of sleeping.
- :class:`TcpProxy`: sit between a client and PostgreSQL (or a gateway) on loopback and
  misbehave on command: refuse connections, cut every open connection (also in the middle
  of a query), or black-hole traffic (accept and never answer). This is how database
  outages are produced without touching the shared server.
- :func:`find_postgres` / :class:`TestDatabase`: a real PostgreSQL for tests: the server
  named by ``IBKR_BRIDGE_TEST_DSN`` or ``DATABASE_URL``, else 127.0.0.1:5432, else an
  embedded one started with the ``pgserver`` package; each test gets its own schema.
- :class:`ScriptedFeed`: a feed that connects, fails and drops when told, for testing code
  around a :class:`~ibkr_bridge.Bridge` without a simulator
  (``Bridge(settings, feed=ScriptedFeed())``).
- :func:`expected_net_greeks`: the net Greeks of a simulator portfolio recomputed by hand
  with Black-Scholes (Black-76 for FOP), independently of the bridge's own aggregation.
"""

from __future__ import annotations

from ibkr_bridge.core.clock import FakeClock, SystemClock
from ibkr_bridge.testing._feed import ScriptedFeed, expected_net_greeks, wait_until
from ibkr_bridge.testing._postgres import TestDatabase, find_postgres, stop_embedded_postgres
from ibkr_bridge.testing._proxy import ProxyMode, TcpProxy

__all__ = [
    "FakeClock",
    "ProxyMode",
    "ScriptedFeed",
    "SystemClock",
    "TcpProxy",
    "TestDatabase",
    "expected_net_greeks",
    "find_postgres",
    "stop_embedded_postgres",
    "wait_until",
]
