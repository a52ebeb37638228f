"""The per-tick fast path: legs as small mutable slots records, judged and summed in one pass.

:func:`~ibkr_bridge.core.greeks.aggregate` and :func:`~ibkr_bridge.core.greeks.judge_legs`
are the reference: they take frozen :class:`Leg` / :class:`LegGreeks` records, and building
those for a 1,000-leg book cost most of a tick. A :class:`NetLeg` carries what the sums
need, already cleaned and scaled (a feed keeps one per position and refreshes it only when
its Greeks object changes); :func:`aggregate_net` gives exactly the rows ``aggregate`` (or
``aggregate_accounts``) gives for the same legs: the same terms in the same order, summed by
the same ``math.fsum``, so bit for bit. :func:`judge_ages` builds records only for the legs
that are not current, which is all ``judge_legs`` looks at.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Final

import attrs

from ibkr_bridge.core.greeks._aggregate import Leg, _Net, _net_rows, _times, flat_row
from ibkr_bridge.core.greeks._positions import ALL_ACCOUNTS
from ibkr_bridge.core.greeks._values import (
    FUTURE_SEC_TYPES,
    OPTION_SEC_TYPES,
    clean_greek,
    clean_portal_greek,
    clean_price,
    multiplier_from,
)
from ibkr_bridge.core.greeks.staleness import GreeksRule, LegGreeks, LegsVerdict, judge_legs
from ibkr_bridge.core.records import GreeksRow

OPTION: Final = 0
STOCK: Final = 1  # STK, ETF: delta = shares
FUTURE: Final = 2  # delta = contracts * multiplier

Terms = tuple[float | None, float | None, float | None, float | None]
#: An option leg with no Greeks at all: four missing terms.
NO_TERMS: Final[Terms] = (None, None, None, None)
#: Legs by symbol, as :func:`by_symbol_of` groups them.
Groups = Mapping[str, Sequence["NetLeg"]]


class NetLeg(abc.ABC):
    """One open leg as :func:`aggregate_net` sums it (one position; SEC_TYPES only).

    ``terms`` are the leg's contributions to net delta, gamma, vega and theta, already
    cleaned and scaled as ``aggregate`` scales them (``None``: missing or not finite);
    ``missing`` says an option leg lacks one of its four Greeks, ``model`` that they are
    the model's; ``price`` is the leg's own underlying price, cleaned (the fallback when
    the feed has none for its symbol). :meth:`to_leg` gives the equivalent :class:`Leg`.
    """

    __slots__ = ("account", "conid", "kind", "missing", "model", "price", "symbol", "terms")

    def __init__(
        self,
        *,
        conid: int,
        symbol: str,
        account: str,
        kind: int,
        terms: Terms,
        missing: bool = False,
        model: bool = False,
        price: float | None = None,
    ) -> None:
        self.conid = conid
        self.symbol = symbol
        self.account = account
        self.kind = kind
        self.terms = terms
        self.missing = missing
        self.model = model
        self.price = price

    @abc.abstractmethod
    def to_leg(self) -> Leg:
        """The equivalent :class:`Leg` (each kind of record knows how to rebuild its own)."""


class LegNet(NetLeg):
    """A :class:`NetLeg` made from a :class:`Leg` (a model-priced leg, or a test's)."""

    __slots__ = ("leg",)

    def __init__(self, leg: Leg) -> None:
        kind = (
            OPTION
            if leg.sec_type in OPTION_SEC_TYPES
            else FUTURE
            if leg.sec_type in FUTURE_SEC_TYPES
            else STOCK
        )
        missing = False
        terms: Terms
        if kind == OPTION:
            size = leg.quantity * multiplier_from(leg.multiplier)
            clean = clean_greek if leg.ib_sentinels else clean_portal_greek
            d, g, v, t = (clean(x) for x in (leg.delta, leg.gamma, leg.vega, leg.theta))
            missing = d is None or g is None or v is None or t is None
            terms = (_times(size, d), _times(size, g), _times(size, v), _times(size, t))
        else:
            linear = leg.quantity
            if kind == FUTURE:
                linear *= multiplier_from(leg.multiplier)
            terms = linear_terms(linear)
        super().__init__(
            conid=leg.conid,
            symbol=leg.symbol,
            account=leg.account,
            kind=kind,
            terms=terms,
            missing=missing,
            model=not missing and kind == OPTION and leg.greeks_source == "model",
            price=clean_price(leg.underlying_price),
        )
        self.leg = leg

    def to_leg(self) -> Leg:
        return self.leg


def linear_terms(linear: float) -> Terms:
    """A stock's or a future's terms: its delta (shares, or contracts * multiplier), then
    exact zeros (no gamma, vega or theta)."""
    # aggregate() drops a non-finite sum; a non-finite term has the same effect as None.
    return (linear if math.isfinite(linear) else None, 0.0, 0.0, 0.0)


def _total(column: Sequence[float | None]) -> float | None:
    """What ``_aggregate._sum`` gives for the same terms (each finite or None here)."""
    try:
        # fsum refuses None with a TypeError: cheaper than looking for one first.
        total = math.fsum(column)  # type: ignore[arg-type]
    except (TypeError, OverflowError):
        return None
    return total if math.isfinite(total) else None


def _net(legs: Sequence[NetLeg], price: float | None, omit: Collection[int]) -> _Net:
    live = [leg for leg in legs if leg.kind != OPTION or leg.conid not in omit] if omit else legs
    # An omitted leg (no current Greeks) is counted, never summed.
    missing = len(legs) - len(live) + [leg.missing for leg in live].count(True)
    columns = list(zip(*[leg.terms for leg in live], strict=True)) or [(), (), (), ()]
    delta = _total(columns[0])
    return _Net(
        delta=delta,
        gamma=_total(columns[1]),
        vega=_total(columns[2]),
        theta=_total(columns[3]),
        price=price,
        dollar_delta=_times(delta, price),
        legs=len(legs),
        legs_missing=missing,
        legs_model=[leg.model for leg in live].count(True),
    )


def _price(symbol: str, legs: Sequence[NetLeg], prices: Mapping[str, float]) -> float | None:
    given = clean_price(prices.get(symbol))
    if given is not None:
        return given
    # As aggregate(): the lowest conid's own price, whatever the legs' order.
    candidates = [(leg.conid, leg.price) for leg in legs if leg.price is not None]
    return min(candidates)[1] if candidates else None


def by_symbol_of(legs: Iterable[NetLeg]) -> dict[str, list[NetLeg]]:
    """The legs grouped by symbol, symbols sorted, each group in the legs' order: what
    :func:`aggregate_net` sums. A feed whose positions did not change may keep it."""
    by_symbol: dict[str, list[NetLeg]] = {}
    for leg in legs:
        group = by_symbol.get(leg.symbol)
        if group is None:
            by_symbol[leg.symbol] = [leg]
        else:
            group.append(leg)
    return dict(sorted(by_symbol.items()))


def _rows_of(
    legs: Sequence[NetLeg],
    *,
    account: str,
    timestamp: datetime,
    api_mode: str,
    prices: Mapping[str, float],
    omit: Collection[int],
    groups: Groups | None = None,
) -> list[GreeksRow]:
    by_symbol = by_symbol_of(legs) if groups is None else groups
    if not by_symbol:
        raise ValueError("no open legs to aggregate: use flat_row() for a flat account")
    nets = {
        symbol: _net(group, _price(symbol, group, prices), omit)
        for symbol, group in by_symbol.items()
    }
    return _net_rows(nets, account=account, timestamp=timestamp, api_mode=api_mode)


def aggregate_net(
    legs: Sequence[NetLeg],
    *,
    account: str,
    timestamp: datetime,
    api_mode: str,
    accounts: Sequence[str] = (),
    underlying_prices: Mapping[str, float] | None = None,
    omit: Collection[int] = (),
    groups: Groups | None = None,
) -> list[GreeksRow]:
    """The rows ``aggregate(account=account)`` gives, or with several ``accounts`` the rows
    ``aggregate_accounts`` gives, for the same legs (open legs of SEC_TYPES only).

    ``groups``: ``by_symbol_of(legs)`` if the caller kept it (of these very legs)."""
    prices = underlying_prices or {}
    if len(accounts) <= 1:
        return _rows_of(
            legs,
            account=account,
            timestamp=timestamp,
            api_mode=api_mode,
            prices=prices,
            omit=omit,
            groups=groups,
        )
    names = sorted(set(accounts) | {leg.account for leg in legs})
    every = _rows_of(
        legs,
        account=ALL_ACCOUNTS,
        timestamp=timestamp,
        api_mode=api_mode,
        prices=prices,
        omit=omit,
        groups=groups,
    )
    own: dict[str, list[NetLeg]] = {}
    for leg in legs:
        own.setdefault(leg.account, []).append(leg)
    rows: list[GreeksRow] = []
    for name in names:
        if name not in own:
            rows.append(flat_row(name, timestamp, api_mode))
            continue
        rows.extend(
            _rows_of(
                own[name],
                account=name,
                timestamp=timestamp,
                api_mode=api_mode,
                prices=prices,
                omit=omit,
            )
        )
    return rows + every


#: One option leg's age as a feed measured it: (conid, name, age, waited), see LegGreeks.
LegAge = tuple[int, str, float | None, float]


def judge_ages(
    ages: Sequence[LegAge],
    rule: GreeksRule,
    *,
    broken_farms: Collection[str] = (),
    legs: frozenset[int] | None = None,
    unpriced: Collection[int] = (),
) -> LegsVerdict:
    """Exactly ``judge_legs`` of the same legs as :class:`LegGreeks` records.

    A current leg (Greeks received, no older than ``stale_after``, no broken farm) adds
    nothing to the verdict but its conid, so only the others are made records and judged.
    ``legs`` is every option leg's conid when ``ages`` leaves current legs out (None: the
    conids in ``ages`` are all of them). ``unpriced`` as for ``judge_legs`` (those legs
    are judged although current, so ``ages`` must hold them).
    """
    stale_after = rule.stale_after
    others = (
        ages
        if broken_farms
        else [
            leg
            for leg in ages
            if leg[2] is None or leg[2] > stale_after or (unpriced and leg[0] in unpriced)
        ]
    )
    verdict = judge_legs(
        [LegGreeks(conid=c, name=n, age=a, waited=w) for c, n, a, w in others],
        rule,
        broken_farms=broken_farms,
        unpriced=unpriced,
    )
    every = frozenset(map(itemgetter(0), ages)) if legs is None else legs
    return attrs.evolve(verdict, legs=every)
