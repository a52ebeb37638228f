"""The portfolio model shared by the simulators (TWS socket and Client Portal).

A :class:`Portfolio` holds accounts, instruments, positions, underlying prices and
volatilities. Option prices and Greeks come from plain Black-Scholes (no dividends;
futures options use the same formula on the futures price) so that a test can
recompute every number the simulators send with :func:`black_scholes`.

Underlyings move by a geometric Brownian random walk driven by ``random.Random(seed)``
and by the ``dt`` the caller passes to :meth:`Portfolio.step`: given the seed and the
clock, a session is reproducible.

Conventions follow IBKR: Greeks are per share (per unit of the underlying), vega per
one volatility point, theta per calendar day; ``avg_cost`` is per share for stock and
per contract (price x multiplier) for options and futures; short positions are negative.

The parts: ``_calendar`` (expiry times, relative expiries), ``_records`` (instruments,
positions and the other immutable records), ``_black_scholes`` (the model), ``_walk``
(the random walk), ``_portfolio`` (the mutable :class:`Portfolio`), ``_loading`` (from a
mapping or a file) and ``_demo`` (the demo books, one with two accounts).
"""

from __future__ import annotations

from ibkr_bridge.sim.portfolio._black_scholes import OptionGreeks, black_scholes
from ibkr_bridge.sim.portfolio._calendar import NEW_YORK, resolve_expiry, years_between
from ibkr_bridge.sim.portfolio._demo import (
    ES_CONID,
    SECOND_ACCOUNT,
    SPY_CONID,
    default_portfolio,
    single_underlying_portfolio,
    two_account_portfolio,
)
from ibkr_bridge.sim.portfolio._loading import load_portfolio, portfolio_from_dict
from ibkr_bridge.sim.portfolio._portfolio import Portfolio
from ibkr_bridge.sim.portfolio._records import (
    DEFAULT_ACCOUNT,
    Instrument,
    PortfolioSnapshot,
    Position,
    PositionChange,
    Quote,
)

__all__ = [
    "DEFAULT_ACCOUNT",
    "ES_CONID",
    "NEW_YORK",
    "SECOND_ACCOUNT",
    "SPY_CONID",
    "Instrument",
    "OptionGreeks",
    "Portfolio",
    "PortfolioSnapshot",
    "Position",
    "PositionChange",
    "Quote",
    "black_scholes",
    "default_portfolio",
    "load_portfolio",
    "portfolio_from_dict",
    "resolve_expiry",
    "single_underlying_portfolio",
    "two_account_portfolio",
    "years_between",
]
