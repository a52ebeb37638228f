"""An option leg's four terms from IB's Greeks, the SOCKET feed's hot path.

What :func:`~ibkr_bridge.core.greeks.clean_greek` then ``_times`` give for each Greek (IB's
-2 "not computed", NaN, inf and the unset double are missing; a product that overflows is
dropped), inlined for the common case of four plain floats: this runs once per Greeks
tick per leg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ib_async import OptionComputation

from ibkr_bridge.core.greeks import Terms, clean_greek, clean_price

if TYPE_CHECKING:
    from ibkr_bridge.feeds.socket._netlegs import _SocketLeg

__all__ = ["refresh"]

_LOW: Final = -1e300  # IB's unset double and anything near it are not data (_values)
_HIGH: Final = 1e300


def _term(size: float, value: object) -> tuple[float | None, bool]:
    """A Greek's term and whether it is missing, when it is not a plain float (rare)."""
    clean = clean_greek(value)
    if clean is None:
        return None, True
    product = size * clean
    return (product if product - product == 0.0 else None), False


def _option_terms(size: float, greeks: OptionComputation) -> tuple[Terms, bool]:
    """clean_greek then _times for the four Greeks, inline for plain floats: the hot path."""
    out: list[float | None] = []
    missing = False
    for value in (greeks.delta, greeks.gamma, greeks.vega, greeks.theta):
        if type(value) is float and _LOW < value < _HIGH and value != -2.0:
            product = size * value
            # product - product is 0.0 exactly when the product is finite.
            out.append(product if product - product == 0.0 else None)
        else:
            term, lost = _term(size, value)
            out.append(term)
            missing = missing or lost
    return (out[0], out[1], out[2], out[3]), missing


def refresh(leg: _SocketLeg, greeks: OptionComputation) -> None:
    """A new Greeks object: the leg's four terms (clean_greek, then _times) and its price."""
    d, g, v, t = greeks.delta, greeks.gamma, greeks.vega, greeks.theta
    if (
        type(d) is float
        and type(g) is float
        and type(v) is float
        and type(t) is float
        and _LOW < d < _HIGH
        and _LOW < g < _HIGH
        and _LOW < v < _HIGH
        and _LOW < t < _HIGH
        and d != -2.0
        and g != -2.0
        and v != -2.0
        and t != -2.0
    ):
        # Four plain Greeks, the hot path: clean_greek inlined.
        size = leg.size
        d, g, v, t = size * d, size * g, size * v, size * t
        # x - x is 0.0 exactly when x is finite (_times drops a product that overflowed).
        if d - d == 0.0 and g - g == 0.0 and v - v == 0.0 and t - t == 0.0:
            leg.terms = (d, g, v, t)
        else:
            leg.terms = _finite_only(d, g, v, t)
        leg.missing = False
    else:
        leg.terms, leg.missing = _option_terms(leg.size, greeks)
    u = greeks.undPrice
    leg.price = u if type(u) is float and 0.0 < u < _HIGH else clean_price(u)


def _finite_only(d: float, g: float, v: float, t: float) -> Terms:
    return tuple(x if x - x == 0.0 else None for x in (d, g, v, t))  # type: ignore[return-value]
