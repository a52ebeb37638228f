"""Net Greeks of a portfolio from per-contract Greeks: one pure function for both feeds.

SOCKET (ib_async tickers) and PORTAL (Client Portal snapshot strings) each turn their
positions into :class:`Leg` records; :func:`aggregate` turns legs into
:class:`~ibkr_bridge.core.records.GreeksRow` records. Nothing here does IO or reads a clock.

Rules (see ``docs/greeks.md``):

* net Greek = sum of quantity * multiplier * per-share Greek for options (OPT, FOP); a stock or
  ETF contributes delta = shares, a future delta = quantity * multiplier;
* a missing Greek is never summed as 0: a column any option leg lacks is ``None``;
* with several underlyings the PORTFOLIO row is followed by one row per underlying;
* an option leg's Greeks count only while they are current (:func:`judge_legs`): received,
  no older than ``stale_after`` and no market-data farm reported broken; a leg without
  current Greeks past ``leg_grace`` is named, and the row is skipped (the default) or
  written from the other legs with the leg counted in ``legs_missing`` (``partial``).

Modules: ``_values`` (cleaning numbers), ``_aggregate`` (legs and aggregate),
``staleness`` (judge_legs), ``_model`` (model Greeks where IB has none, BRIDGE_GREEKS_FALLBACK),
``_positions`` (per-position rows and per-account nets from the same snapshot), ``_net``
(the per-tick fast path: :class:`NetLeg` records, :func:`aggregate_net`, :func:`judge_ages`,
equal to the reference functions above for the same legs).
"""

from __future__ import annotations

from ibkr_bridge.core.greeks._aggregate import GreekFields, Leg, aggregate, flat_row, row_key
from ibkr_bridge.core.greeks._model import apply_model, model_greeks, needs_model, years_to_expiry
from ibkr_bridge.core.greeks._net import (
    FUTURE,
    NO_TERMS,
    OPTION,
    STOCK,
    Groups,
    LegAge,
    LegNet,
    NetLeg,
    Terms,
    aggregate_net,
    by_symbol_of,
    judge_ages,
    linear_terms,
)
from ibkr_bridge.core.greeks._positions import (
    ALL_ACCOUNTS,
    aggregate_accounts,
    position_key,
    position_rows,
)
from ibkr_bridge.core.greeks._values import (
    BY_SYMBOL_SEC_TYPES,
    FUTURE_SEC_TYPES,
    OPTION_SEC_TYPES,
    PORTFOLIO,
    SEC_TYPES,
    STOCK_SEC_TYPES,
    clean_greek,
    clean_portal_greek,
    clean_price,
    mid_or_last,
    multiplier_from,
    option_right,
    parse_portal_number,
)
from ibkr_bridge.core.greeks.staleness import (
    UNPRICED,
    GreeksRule,
    LegGreeks,
    LegProblem,
    LegsVerdict,
    judge_legs,
)
from ibkr_bridge.core.records import PositionRow

__all__ = [
    "ALL_ACCOUNTS",
    "BY_SYMBOL_SEC_TYPES",
    "FUTURE",
    "FUTURE_SEC_TYPES",
    "NO_TERMS",
    "OPTION",
    "OPTION_SEC_TYPES",
    "PORTFOLIO",
    "SEC_TYPES",
    "STOCK",
    "STOCK_SEC_TYPES",
    "UNPRICED",
    "GreekFields",
    "GreeksRule",
    "Groups",
    "Leg",
    "LegAge",
    "LegGreeks",
    "LegNet",
    "LegProblem",
    "LegsVerdict",
    "NetLeg",
    "PositionRow",
    "Terms",
    "aggregate",
    "aggregate_accounts",
    "aggregate_net",
    "apply_model",
    "by_symbol_of",
    "clean_greek",
    "clean_portal_greek",
    "clean_price",
    "flat_row",
    "judge_ages",
    "judge_legs",
    "linear_terms",
    "mid_or_last",
    "model_greeks",
    "multiplier_from",
    "needs_model",
    "option_right",
    "parse_portal_number",
    "position_key",
    "position_rows",
    "row_key",
    "years_to_expiry",
]
