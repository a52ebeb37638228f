"""The SOCKET feed's positions as :class:`~ibkr_bridge.core.greeks.NetLeg` records, per tick.

The fast twin of :func:`~._positions.session_legs` (kept as the reference the tests compare
with). What a position never changes (its contract's fields, multiplier, quantity, its
account) is read once per ib_async ``Position`` object, which ib_async replaces when the
position changes. An option leg's terms are recomputed only when its ticker's
``modelGreeks`` object changed (ib_async replaces it on every Greeks tick); a future's price
is read every tick. Each record is the leg itself, updated in place: nothing is built per
leg per tick but its age tuple and, on a Greeks tick, its four terms.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import is_
from typing import Final, Protocol

from ib_async import OptionComputation, Position, Ticker

from ibkr_bridge.core.greeks import (
    FUTURE,
    FUTURE_SEC_TYPES,
    NO_TERMS,
    OPTION,
    OPTION_SEC_TYPES,
    SEC_TYPES,
    STOCK,
    Leg,
    LegAge,
    NetLeg,
    Terms,
    clean_greek,
    clean_price,
    linear_terms,
)
from ibkr_bridge.feeds.socket._positions import _option_fields, _option_values
from ibkr_bridge.feeds.socket._underlyings import Streams, future_price
from ibkr_bridge.feeds.socket._wire import _multiplier, _Subscription, _ticker_price

_UNSET: Final = object()  # "no Greeks object seen yet" (None is a real state: no Greeks)
_LOW: Final = -1e300  # IB's unset double and anything near it are not data (_values)
_HIGH: Final = 1e300


class LegSource(Streams, Protocol):
    """What the legs are read from: a :class:`~._session._Session`, or a test's double."""

    subs: dict[int, _Subscription]
    first_seen: dict[int, float]

    def open_positions(self) -> list[Position]: ...


class _SocketLeg(NetLeg):
    """One position's leg, kept while ib_async keeps its ``Position`` object."""

    __slots__ = (
        "greeks",
        "local_symbol",
        "multiplier",
        "name",
        "option",
        "pos",
        "quantity",
        "sec_type",
        "size",
        "ticker",
        "unique",
    )

    def __init__(self, pos: Position, sec_type: str) -> None:
        contract = pos.contract
        # The reference record validates (a non-finite quantity, a bad multiplier raise as
        # session_legs raises) and normalises the static fields once.
        static = Leg(
            conid=contract.conId,
            symbol=contract.symbol,
            sec_type=sec_type,
            quantity=pos.position,
            multiplier=_multiplier(contract.multiplier),
            account=pos.account,
            local_symbol=contract.localSymbol or "",
        )
        kind = (
            OPTION
            if sec_type in OPTION_SEC_TYPES
            else FUTURE
            if sec_type in FUTURE_SEC_TYPES
            else STOCK
        )
        multiplier = static.multiplier if static.multiplier is not None else 1.0
        terms = NO_TERMS
        if kind == STOCK:
            terms = linear_terms(static.quantity)
        elif kind == FUTURE:
            terms = linear_terms(static.quantity * multiplier)
        super().__init__(
            conid=static.conid,
            symbol=static.symbol,
            account=static.account,
            kind=kind,
            terms=terms,
            missing=kind == OPTION,
        )
        self.pos = pos
        self.sec_type = static.sec_type
        self.quantity = static.quantity
        self.multiplier = static.multiplier
        self.size = static.quantity * multiplier
        self.local_symbol = static.local_symbol
        self.name = contract.localSymbol or f"{contract.symbol} {sec_type}"  # as _judged
        self.option = kind == OPTION
        self.unique = True  # the first leg of its conid (a conid held in two accounts)
        self.ticker: Ticker | None = None
        self.greeks: object = _UNSET

    def to_leg(self) -> Leg:
        """The :class:`Leg` session_legs builds for this position now."""
        greeks = self.greeks if isinstance(self.greeks, OptionComputation) else None
        if self.option:
            return Leg(
                conid=self.conid,
                symbol=self.symbol,
                sec_type=self.sec_type,
                quantity=self.quantity,
                multiplier=self.multiplier,
                **_option_values(greeks, self.price if self.sec_type == "FOP" else None),
                ib_sentinels=True,
                account=self.account,
                local_symbol=self.local_symbol,
                **_option_fields(self.pos.contract, greeks, self.ticker),
            )
        return Leg(
            conid=self.conid,
            symbol=self.symbol,
            sec_type=self.sec_type,
            quantity=self.quantity,
            multiplier=self.multiplier,
            underlying_price=self.price,
            ib_sentinels=True,
            account=self.account,
            local_symbol=self.local_symbol,
        )


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


class NetLegs:
    """The feed's per-position records, reused from tick to tick."""

    def __init__(self) -> None:
        # id(Position) -> (that Position, its leg; None: not a type with Greeks). The
        # Position is kept with it, so its id cannot be reused while the entry lives.
        self._known: dict[int, tuple[Position, _SocketLeg | None]] = {}
        self._positions: list[Position] = []  # the open positions at the last read
        self._legs: list[_SocketLeg] = []  # their legs, in the same order
        self._conids: frozenset[int] = frozenset()  # their option legs' conids
        self._fops: list[_SocketLeg] = []  # their futures options

    def _legs_of(self, positions: list[Position]) -> list[_SocketLeg]:
        """The legs of ``positions``: the same list as last tick while ib_async holds the
        very same Position objects (the common case: one identity check each)."""
        last = self._positions
        if len(positions) == len(last) and all(map(is_, positions, last)):
            return self._legs
        known = self._known
        if len(known) > 2 * len(positions) + 64:
            # Positions no longer held are forgotten (not on every change).
            live = {id(pos) for pos in positions}
            known = self._known = {k: v for k, v in known.items() if k in live}
        legs: list[_SocketLeg] = []
        seen: set[int] = set()
        for pos in positions:
            entry = known.get(id(pos))
            if entry is None or entry[0] is not pos:
                entry = known[id(pos)] = (pos, _new_leg(pos))
            leg = entry[1]
            if leg is not None:
                # One stream, one verdict: a conid in two accounts is judged once.
                leg.unique = leg.conid not in seen
                seen.add(leg.conid)
                legs.append(leg)
        self._positions, self._legs = positions, legs
        self._conids = frozenset(leg.conid for leg in legs if leg.option)
        self._fops = [leg for leg in legs if leg.sec_type == "FOP"]
        return legs

    def read(
        self, session: LegSource, mono: float, *, current: float | None = None
    ) -> tuple[list[NetLeg], list[LegAge], frozenset[int]]:
        """The legs of the open positions, the option legs' ages (once per conid) and
        every option leg's conid, as :func:`~._positions.session_legs` reads them.

        With ``current`` (the rule's ``stale_after``; None while a market-data farm is
        broken) a leg whose Greeks are that recent is left out of the ages: it is current,
        and :func:`~ibkr_bridge.core.greeks.judge_ages` only needs the others.
        """
        legs = self._legs_of(session.open_positions())
        ages: list[LegAge] = []
        subs = session.subs
        for leg in legs:
            if not leg.option:
                if leg.kind == FUTURE:
                    sub = subs.get(leg.conid)
                    leg.price = _ticker_price(sub.ticker if sub is not None else None)
                continue
            sub = subs.get(leg.conid)
            if sub is None:  # no stream: waits from when it was first seen
                leg.greeks = leg.ticker = None
                leg.terms, leg.missing, leg.price = NO_TERMS, True, None
                if leg.unique:
                    since = session.first_seen.setdefault(leg.conid, mono)
                    ages.append((leg.conid, leg.name, None, mono - since))
                continue
            ticker = sub.ticker
            greeks = ticker.modelGreeks
            if greeks is not leg.greeks or ticker is not leg.ticker:
                leg.greeks, leg.ticker = greeks, ticker
                if greeks is None:
                    leg.terms, leg.missing, leg.price = NO_TERMS, True, None
                else:
                    _refresh(leg, greeks)
            if leg.unique:
                at = sub.greeks_at
                age = None if at is None or greeks is None else mono - at
                if current is None or age is None or age > current:
                    ages.append((leg.conid, leg.name, age, mono - sub.subscribed_at))
        for leg in self._fops:  # IB's undPrice, else the future's price now
            und = leg.greeks.undPrice if isinstance(leg.greeks, OptionComputation) else None
            leg.price = clean_price(und) or future_price(session, leg.conid)
        return list(legs), ages, self._conids


def _refresh(leg: _SocketLeg, greeks: OptionComputation) -> None:
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


def _new_leg(pos: Position) -> _SocketLeg | None:
    sec_type = pos.contract.secType.upper()
    return _SocketLeg(pos, sec_type) if sec_type in SEC_TYPES else None


def legs_of(legs: Iterable[NetLeg]) -> list[Leg]:
    """The reference records of ``legs`` (for the model fallback and per-position rows)."""
    return [leg.to_leg() for leg in legs]
