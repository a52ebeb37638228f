"""The SOCKET feed's positions as Greeks legs: each leg's model Greeks, age and price.

ib_async replaces a ticker's ``modelGreeks`` on every Greeks tick; the session notes when
each new one arrived (:class:`~._wire._Subscription`), which is the age the staleness rule
judges. A leg with no stream at all (its contract could not be resolved) waits from when it
was first seen, like a requested one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from ib_async import Contract, OptionComputation, Ticker

from ibkr_bridge.core.greeks import (
    FUTURE_SEC_TYPES,
    OPTION_SEC_TYPES,
    SEC_TYPES,
    GreekFields,
    Leg,
    LegGreeks,
    clean_price,
    mid_or_last,
    option_right,
)
from ibkr_bridge.feeds.socket._underlyings import future_price
from ibkr_bridge.feeds.socket._wire import _multiplier, _Subscription, _ticker_price

if TYPE_CHECKING:
    from ibkr_bridge.feeds.socket._session import _Session


def session_legs(session: _Session, mono: float) -> tuple[list[Leg], list[LegGreeks]]:
    """The legs of ``session``'s open positions that carry Greeks, and the option legs' ages.

    Each leg carries its position's account; a contract held in two accounts is two legs
    (over one market-data stream) and is judged once. ``mono`` is the feed clock's
    monotonic time now.
    """
    legs: list[Leg] = []
    judged: list[LegGreeks] = []
    seen: set[int] = set()  # the conids judged: one stream, one verdict
    for pos in session.open_positions():
        contract = pos.contract
        sec_type = contract.secType.upper()
        if sec_type not in SEC_TYPES:
            continue
        sub = session.subs.get(contract.conId)
        ticker = sub.ticker if sub is not None else None
        values: GreekFields
        option: _OptionFields = {}
        if sec_type in OPTION_SEC_TYPES:
            greeks = ticker.modelGreeks if ticker is not None else None
            if contract.conId not in seen:
                seen.add(contract.conId)
                judged.append(_judged(session, contract, sec_type, sub, greeks, mono))
            future = future_price(session, contract.conId) if sec_type == "FOP" else None
            values = _option_values(greeks, future)
            option = _option_fields(contract, greeks, ticker)
        else:
            price = _ticker_price(ticker) if sec_type in FUTURE_SEC_TYPES else None
            values = {"underlying_price": price}
        legs.append(
            Leg(
                conid=contract.conId,
                symbol=contract.symbol,
                sec_type=sec_type,
                quantity=pos.position,
                multiplier=_multiplier(contract.multiplier),
                **values,
                ib_sentinels=True,  # ib_async marks a Greek not computed with -2
                account=pos.account,
                local_symbol=contract.localSymbol or "",
                **option,
            )
        )
    return legs, judged


def _judged(
    session: _Session,
    contract: Contract,
    sec_type: str,
    sub: _Subscription | None,
    greeks: OptionComputation | None,
    mono: float,
) -> LegGreeks:
    if sub is not None:
        since = sub.subscribed_at
        age = None if sub.greeks_at is None or greeks is None else mono - sub.greeks_at
    else:
        since = session.first_seen.setdefault(contract.conId, mono)
        age = None
    return LegGreeks(
        conid=contract.conId,
        name=contract.localSymbol or f"{contract.symbol} {sec_type}",
        age=age,
        waited=mono - since,
    )


def _option_values(greeks: OptionComputation | None, future: float | None = None) -> GreekFields:
    """An option leg's Greeks and its underlying's price from ib_async's OptionComputation;
    ``future`` (a futures option's future's price) stands in for an undPrice IB left out."""
    if greeks is None:
        return {} if future is None else {"underlying_price": future}
    und = greeks.undPrice
    return {
        "delta": greeks.delta,
        "gamma": greeks.gamma,
        "vega": greeks.vega,
        "theta": greeks.theta,
        "underlying_price": und if future is None or clean_price(und) is not None else future,
    }


class _OptionFields(TypedDict, total=False):
    """What the model fallback needs of an option leg (``Leg(**fields)``)."""

    right: str | None
    strike: float | None
    expiry: str | None
    implied_vol: float | None
    option_price: float | None


def _option_fields(
    contract: Contract, greeks: OptionComputation | None, ticker: Ticker | None
) -> _OptionFields:
    """The contract's terms, IB's implied volatility and the option's mid price."""
    return {
        "right": option_right(contract.right),
        "strike": clean_price(contract.strike),
        "expiry": contract.lastTradeDateOrContractMonth or None,
        "implied_vol": clean_price(greeks.impliedVol) if greeks is not None else None,
        "option_price": None
        if ticker is None
        else mid_or_last(ticker.bid, ticker.ask, ticker.last),
    }


def underlying_prices(session: _Session) -> dict[str, float]:
    """The traded price of each underlying with a price stream, by symbol."""
    prices: dict[str, float] = {}
    for symbol, conid in session.price_conid.items():
        sub = session.subs.get(conid)
        price = _ticker_price(sub.ticker if sub is not None else None)
        if price is not None:
            prices[symbol] = price
    return prices
