"""The SOCKET feed's positions as :class:`~ibkr_bridge.core.greeks.NetLeg` records, per tick.

The fast twin of :func:`~._positions.session_legs` (kept as the reference the tests compare
with). What a position never changes (its contract's fields, multiplier, quantity, its
account) is read once per ib_async ``Position`` object, which ib_async replaces when the
position changes. An option leg's terms are recomputed only when its ticker's
``modelGreeks`` object changed (ib_async replaces it on every Greeks tick); a future's price
is read every tick. Each record is the leg itself, updated in place: nothing is built per
leg per tick but its age tuple and, on a Greeks tick, its four terms.

The session calls :meth:`NetLegs.arrived` as each Greeks object arrives, which does that
recomputation then rather than in the tick (a tick of a 1,000-leg book that recomputed
every leg spent most of its time there). It is only a cache: :meth:`NetLegs.read` still
compares every leg's Greeks object with its ticker's and recomputes what ``arrived`` missed.
"""

from __future__ import annotations

import math
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
    Groups,
    Leg,
    LegAge,
    NetLeg,
    by_symbol_of,
    clean_price,
    linear_terms,
)
from ibkr_bridge.feeds.socket._positions import _option_fields, _option_values
from ibkr_bridge.feeds.socket._terms import refresh
from ibkr_bridge.feeds.socket._underlyings import Streams, future_price
from ibkr_bridge.feeds.socket._wire import _multiplier, _Subscription, _ticker_price

_UNSET: Final = object()  # "no Greeks object seen yet" (None is a real state: no Greeks)


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
        self._options: list[_SocketLeg] = []  # their option legs, in order
        self._futures: list[_SocketLeg] = []  # their futures
        self._by_conid: dict[int, list[_SocketLeg]] = {}  # their option legs, by conid
        self._groups: Groups = {}  # their legs by symbol (by_symbol_of)

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
        self._options = [leg for leg in legs if leg.option]
        self._futures = [leg for leg in legs if leg.kind == FUTURE]
        self._fops = [leg for leg in self._options if leg.sec_type == "FOP"]
        by_conid: dict[int, list[_SocketLeg]] = {}
        for leg in self._options:
            by_conid.setdefault(leg.conid, []).append(leg)
        self._by_conid = by_conid
        self._conids = frozenset(by_conid)
        self._groups = by_symbol_of(legs)
        return legs

    @property
    def groups(self) -> Groups:
        """The legs :meth:`read` last gave, grouped by symbol (``aggregate_net``'s
        ``groups``): kept while the positions do not change, not regrouped each tick."""
        return self._groups

    def arrived(self, conid: int, ticker: Ticker, greeks: OptionComputation) -> None:
        """New Greeks on ``conid``'s stream ``ticker``: refresh its legs now, as
        :meth:`read` would at the next tick (the legs of the positions at the last read)."""
        for leg in self._by_conid.get(conid, ()):
            if greeks is not leg.greeks or ticker is not leg.ticker:
                _take(leg, ticker, greeks)

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
        subs = session.subs
        for leg in self._futures:
            sub = subs.get(leg.conid)
            leg.price = _ticker_price(sub.ticker if sub is not None else None)
        ages: list[LegAge] = []
        # Ages above this are not current (every age is, with no ``current``).
        limit = -math.inf if current is None else current
        for leg in self._options:  # in the legs' order, as the reference appends ages
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
                _take(leg, ticker, greeks)
            if leg.unique:
                at = sub.greeks_at
                if at is None or greeks is None:
                    ages.append((leg.conid, leg.name, None, mono - sub.subscribed_at))
                elif mono - at > limit:
                    ages.append((leg.conid, leg.name, mono - at, mono - sub.subscribed_at))
        for leg in self._fops:  # IB's undPrice, else the future's price now
            und = leg.greeks.undPrice if isinstance(leg.greeks, OptionComputation) else None
            leg.price = clean_price(und) or future_price(session, leg.conid)
        return list(legs), ages, self._conids


def _take(leg: _SocketLeg, ticker: Ticker, greeks: OptionComputation | None) -> None:
    """The leg's stream now shows ``greeks``: its terms and price from them (read and
    arrived both come here, so the two cannot disagree)."""
    leg.greeks, leg.ticker = greeks, ticker
    if greeks is None:
        leg.terms, leg.missing, leg.price = NO_TERMS, True, None
    else:
        refresh(leg, greeks)


def _new_leg(pos: Position) -> _SocketLeg | None:
    sec_type = pos.contract.secType.upper()
    return _SocketLeg(pos, sec_type) if sec_type in SEC_TYPES else None


def legs_of(legs: Iterable[NetLeg]) -> list[Leg]:
    """The reference records of ``legs`` (for the model fallback and per-position rows)."""
    return [leg.to_leg() for leg in legs]
