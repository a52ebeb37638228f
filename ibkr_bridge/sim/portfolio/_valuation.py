"""How the simulators' portfolio values what it holds: model Greeks, prices, market values.

:class:`Valuation` is the part of :class:`~._portfolio.Portfolio` that reads the market
state (spots, volatilities, the rate, the valuation time) and never changes it.
"""

from __future__ import annotations

import abc
from datetime import datetime

from ibkr_bridge.sim.portfolio._black_scholes import OptionGreeks, option_greeks
from ibkr_bridge.sim.portfolio._calendar import years_between
from ibkr_bridge.sim.portfolio._records import Instrument, Position, cost_multiplier


class Valuation(abc.ABC):
    """Option values (Black-Scholes, Black-76 for FOP) and market values of positions."""

    rate: float
    _spots: dict[int, float]

    @abc.abstractmethod
    def instrument(self, conid: int) -> Instrument: ...

    @abc.abstractmethod
    def underlying_conid(self, conid: int) -> int: ...

    @abc.abstractmethod
    def volatility(self, conid: int) -> float: ...

    @abc.abstractmethod
    def _now(self, now: datetime | None) -> datetime: ...

    def time_to_expiry(self, conid: int, now: datetime | None = None) -> float | None:
        """Years from ``now`` to the instrument's expiry (None when it has none)."""
        expires = self.instrument(conid).expires_at()
        if expires is None:
            return None
        return years_between(self._now(now), expires)

    def greeks(self, conid: int, now: datetime | None = None) -> OptionGreeks | None:
        """Per-share model values (Black-Scholes, Black-76 for FOP) for an option; else None."""
        inst = self.instrument(conid)
        if not inst.is_option:
            return None
        underlying = self.underlying_conid(conid)
        t = self.time_to_expiry(conid, now)
        return option_greeks(inst, self._spots[underlying], t, self.volatility(conid), self.rate)

    def price(self, conid: int, now: datetime | None = None) -> float:
        """Per-share price: spot for an underlying, the model value for an option."""
        greeks = self.greeks(conid, now)
        if greeks is not None:
            return greeks.option_price
        return self._spots[conid]

    def market_value(self, position: Position, now: datetime | None = None) -> float:
        inst = position.instrument
        return position.quantity * self.price(inst.conid, now) * cost_multiplier(inst)

    def unrealized_pnl(self, position: Position, now: datetime | None = None) -> float:
        return self.market_value(position, now) - position.quantity * position.avg_cost
