"""The end of a snapshot both feeds share: judge the option legs, then a flat row or aggregate.

:func:`rows_from_legs` is the reference (frozen :class:`Leg` records; the PORTAL feed's
path); :func:`rows_from_net` gives the same :class:`TickRows` from
:class:`~ibkr_bridge.core.greeks.NetLeg` records (the SOCKET feed's per-tick fast path),
building :class:`Leg` records only for legs the model prices and for per-position rows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

import attrs

from ibkr_bridge.core.greeks import (
    ALL_ACCOUNTS,
    OPTION,
    SEC_TYPES,
    GreeksRule,
    Groups,
    Leg,
    LegAge,
    LegGreeks,
    LegNet,
    LegsVerdict,
    NetLeg,
    aggregate,
    aggregate_accounts,
    aggregate_net,
    apply_model,
    flat_row,
    judge_ages,
    judge_legs,
    needs_model,
    position_rows,
)
from ibkr_bridge.core.records import GreeksRow, PositionRow


class TickRows(NamedTuple):
    """What one snapshot gives: the verdict on the legs, the net rows (None: write nothing)
    and, with ``rule.position_rows``, one row per leg from the same legs and timestamp."""

    verdict: LegsVerdict
    rows: list[GreeksRow] | None
    positions: list[PositionRow]


def rows_from_legs(
    legs: Sequence[Leg],
    judged: Sequence[LegGreeks],
    rule: GreeksRule,
    *,
    account: str,
    now: datetime,
    mode: str,
    prices: Callable[[], Mapping[str, float]],
    broken_farms: Collection[str] = (),
    accounts: Sequence[str] = (),
) -> TickRows:
    """The staleness verdict on ``judged``, and the rows for ``now`` (None: do not write).

    A book with no leg that carries Greeks is genuinely flat: one flat row. ``prices`` (the
    underlyings' prices by symbol) is asked only when there is something to aggregate.
    With ``rule.model`` (BRIDGE_GREEKS_FALLBACK=model) an option leg without current IB
    Greeks past its grace, or with IB's "not computed" values, is priced by the model
    (:func:`~ibkr_bridge.core.greeks.apply_model`) and then counts as current. With
    several ``accounts`` (legs carry theirs) each account gets its rows, then all of them
    under ``account=""``. Per-position rows (``rule.position_rows``) are made from exactly
    the legs and omissions the nets were, so they sum to them.
    """
    verdict = judge_legs(judged, rule, broken_farms=broken_farms)
    book = any(leg.sec_type in SEC_TYPES for leg in legs)
    known: Mapping[str, float] | None = None  # the prices, asked at most once a tick
    if rule.model and book:
        known = prices()
        legs, verdict = _with_model(legs, judged, verdict, rule, now, known, broken_farms)
    if not verdict.write:
        return TickRows(verdict, None, [])  # waiting, stale, or a leg missing (skip)
    several = len(accounts) > 1
    if not book:
        return TickRows(verdict, _flat_rows(account, accounts, now, mode), [])
    if known is None:
        known = prices()
    if several:
        rows = aggregate_accounts(
            legs,
            timestamp=now,
            api_mode=mode,
            accounts=accounts,
            underlying_prices=known,
            omit=verdict.omit,
        )
    else:
        rows = aggregate(
            legs,
            account=account,
            timestamp=now,
            api_mode=mode,
            underlying_prices=known,
            omit=verdict.omit,
        )
    positions = (
        position_rows(
            legs,
            timestamp=now,
            api_mode=mode,
            underlying_prices=known,
            omit=verdict.omit,
            account=ALL_ACCOUNTS if several else account,  # several: legs carry theirs
        )
        if rule.position_rows
        else []
    )
    return TickRows(verdict, rows, positions)


def _flat_rows(account: str, accounts: Sequence[str], now: datetime, mode: str) -> list[GreeksRow]:
    """A genuinely flat book's rows: each account's, then all of them, or the one account."""
    names = (*sorted(accounts), ALL_ACCOUNTS) if len(accounts) > 1 else (account,)
    return [flat_row(name, now, mode) for name in names]


def _model_outcome(modelled: Sequence[Leg], missing: Collection[int]) -> tuple[set[int], set[int]]:
    """The conids the model priced, and those it could not although they need it.

    A current leg IB left "not computed" that the model cannot price either (no implied
    vol, no usable mid) is a missing leg for BRIDGE_MISSING_LEGS, not a row of NULLs.
    """
    filled = {leg.conid for leg in modelled if leg.greeks_source == "model"}
    unpriced = {leg.conid for leg in modelled if leg.conid not in filled and needs_model(leg)}
    return filled, unpriced - set(missing)


def _with_model(
    legs: Sequence[Leg],
    judged: Sequence[LegGreeks],
    verdict: LegsVerdict,
    rule: GreeksRule,
    now: datetime,
    prices: Mapping[str, float],
    broken_farms: Collection[str],
) -> tuple[Sequence[Leg], LegsVerdict]:
    """The legs with model Greeks where IB's are missing, and the verdict on the others.

    A leg still inside its grace keeps waiting for IB's first Greeks: a fresh subscription
    is not a missing leg, so it is not priced by the model yet.
    """
    at = [i for i, leg in enumerate(legs) if leg.conid not in verdict.waiting]
    modelled, _ = apply_model(
        [legs[i] for i in at],
        now=now,
        rate=rule.risk_free_rate,
        underlying_prices=prices,
        omit=verdict.missing_conids,
    )
    filled, unpriced = _model_outcome(modelled, verdict.missing_conids)
    if not filled and not unpriced:
        return legs, verdict
    out = list(legs)
    for i, leg in zip(at, modelled, strict=True):
        out[i] = leg
    rest = [j for j in judged if j.conid not in filled]
    again = judge_legs(rest, rule, broken_farms=broken_farms, unpriced=unpriced)
    # Every option leg was judged; the model only changed which of them are missing.
    return out, attrs.evolve(again, legs=verdict.legs)


def rows_from_net(
    legs: Sequence[NetLeg],
    ages: Sequence[LegAge],
    rule: GreeksRule,
    *,
    account: str,
    now: datetime,
    mode: str,
    prices: Callable[[], Mapping[str, float]],
    broken_farms: Collection[str] = (),
    accounts: Sequence[str] = (),
    judged: frozenset[int] | None = None,
    groups: Groups | None = None,
) -> TickRows:
    """:func:`rows_from_legs` for the same legs as :class:`NetLeg` records and their ages
    (open legs of SEC_TYPES only, as a feed reads them): the same verdict and rows.

    ``judged`` is every option leg's conid when ``ages`` leaves current legs out (see
    :func:`~ibkr_bridge.core.greeks.judge_ages`); with ``rule.model`` ``ages`` must hold
    every option leg (a current leg the model cannot price is judged missing). ``groups``
    is ``by_symbol_of(legs)`` if the feed kept it (see ``aggregate_net``)."""
    verdict = judge_ages(ages, rule, broken_farms=broken_farms, legs=judged)
    book = bool(legs)
    known: Mapping[str, float] | None = None  # the prices, asked at most once a tick
    if rule.model and book:
        known = prices()
        given = legs
        legs, verdict = _net_with_model(legs, ages, verdict, rule, now, known, broken_farms)
        if legs is not given:  # the model replaced legs: the kept groups are not of these
            groups = None
    if not verdict.write:
        return TickRows(verdict, None, [])
    several = len(accounts) > 1
    if not book:
        return TickRows(verdict, _flat_rows(account, accounts, now, mode), [])
    if known is None:
        known = prices()
    rows = aggregate_net(
        legs,
        account=account,
        timestamp=now,
        api_mode=mode,
        accounts=accounts if several else (),
        underlying_prices=known,
        omit=verdict.omit,
        groups=groups,
    )
    positions = (
        position_rows(
            [leg.to_leg() for leg in legs],
            timestamp=now,
            api_mode=mode,
            underlying_prices=known,
            omit=verdict.omit,
            account=ALL_ACCOUNTS if several else account,
        )
        if rule.position_rows
        else []
    )
    return TickRows(verdict, rows, positions)


def _net_with_model(
    legs: Sequence[NetLeg],
    ages: Sequence[LegAge],
    verdict: LegsVerdict,
    rule: GreeksRule,
    now: datetime,
    prices: Mapping[str, float],
    broken_farms: Collection[str],
) -> tuple[Sequence[NetLeg], LegsVerdict]:
    """:func:`_with_model` for NetLegs: only the legs the model may price become Leg records."""
    missing = verdict.missing_conids
    # needs_model(): an option leg past its grace without current or complete IB Greeks.
    at = [
        i
        for i, leg in enumerate(legs)
        if leg.kind == OPTION
        and leg.conid not in verdict.waiting
        and (leg.missing or leg.conid in missing)
    ]
    if not at:
        return legs, verdict
    modelled, _ = apply_model(
        [legs[i].to_leg() for i in at],
        now=now,
        rate=rule.risk_free_rate,
        underlying_prices=prices,
        omit=missing,
    )
    filled, unpriced = _model_outcome(modelled, missing)
    if not filled and not unpriced:
        return legs, verdict
    out = list(legs)
    for i, leg in zip(at, modelled, strict=True):
        if leg.greeks_source == "model":
            out[i] = LegNet(leg)
    again = judge_ages(
        [a for a in ages if a[0] not in filled],
        rule,
        broken_farms=broken_farms,
        unpriced=unpriced,
    )
    return out, attrs.evolve(again, legs=verdict.legs)
