"""Simulators of IBKR's two APIs, for testing apps without a broker account.

The shared :mod:`~ibkr_bridge.sim.portfolio` model holds positions and prices; the
TWS socket simulator (:mod:`~ibkr_bridge.sim.tws`) serves it over the real TWS API wire
protocol, the Client Portal simulator (:mod:`~ibkr_bridge.sim.portal`) over HTTPS.
"""

from __future__ import annotations

from ibkr_bridge.sim.faults import (
    FaultScriptError,
    FaultStep,
    load_fault_script,
    parse_fault_script,
    run_fault_script,
)
from ibkr_bridge.sim.portal import PortalSimulator, parse_portal_fault_script, serve_portal
from ibkr_bridge.sim.portfolio import (
    Instrument,
    OptionGreeks,
    Portfolio,
    PortfolioSnapshot,
    Position,
    PositionChange,
    Quote,
    black_scholes,
    default_portfolio,
    load_portfolio,
    portfolio_from_dict,
    single_underlying_portfolio,
    two_account_portfolio,
)
from ibkr_bridge.sim.tws import RequestRecord, TwsSimulator

__all__ = [
    "FaultScriptError",
    "FaultStep",
    "Instrument",
    "OptionGreeks",
    "PortalSimulator",
    "Portfolio",
    "PortfolioSnapshot",
    "Position",
    "PositionChange",
    "Quote",
    "RequestRecord",
    "TwsSimulator",
    "black_scholes",
    "default_portfolio",
    "load_fault_script",
    "load_portfolio",
    "parse_fault_script",
    "parse_portal_fault_script",
    "portfolio_from_dict",
    "run_fault_script",
    "serve_portal",
    "single_underlying_portfolio",
    "two_account_portfolio",
]
