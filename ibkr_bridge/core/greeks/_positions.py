"""Per-position rows (``position_greeks``) and net rows per account, from one snapshot.

Every leg of a tick becomes one :class:`PositionRow` with the same timestamp as that tick's
PORTFOLIO row, its Greeks scaled by position and multiplier exactly as :func:`aggregate`
scales them before summing, so ``SUM(delta) ... GROUP BY timestamp, account`` over the legs
gives the net row (to the rounding of PostgreSQL's float sum). A leg left out of the net
(no current Greeks) has NULL Greeks here too, so it cannot add what the net does not hold.

With several accounts, :func:`aggregate_accounts` gives each account its own rows and adds
the all-accounts rows under ``account=""`` (empty means all, as ``docs/greeks.md`` says).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from ibkr_bridge.core.greeks._aggregate import Leg, _times, aggregate, flat_row
from ibkr_bridge.core.greeks._values import (
    _KEY_NAMESPACE,
    BY_SYMBOL_SEC_TYPES,
    FUTURE_SEC_TYPES,
    OPTION_SEC_TYPES,
    SEC_TYPES,
    clean_greek,
    clean_portal_greek,
    clean_price,
    multiplier_from,
)
from ibkr_bridge.core.records import GreeksRow, PositionRow

ALL_ACCOUNTS: Final = ""


def position_key(account: str, conid: int, timestamp: datetime, api_mode: str) -> str:
    """The idempotency key of a position row: the same tick recomputed gets the same key."""
    name = json.dumps(["position", account, conid, timestamp.astimezone(UTC).isoformat(), api_mode])
    return uuid.uuid5(_KEY_NAMESPACE, name).hex


def _position_row(
    leg: Leg,
    *,
    timestamp: datetime,
    api_mode: str,
    price: float | None,
    omitted: bool,
    account: str,
) -> PositionRow:
    multiplier = multiplier_from(leg.multiplier)
    unit: list[float | None]
    scaled: list[float | None]
    if leg.sec_type in OPTION_SEC_TYPES:
        clean = clean_greek if leg.ib_sentinels else clean_portal_greek
        unit = (
            [None] * 4
            if omitted
            else [clean(g) for g in (leg.delta, leg.gamma, leg.vega, leg.theta)]
        )
        size = leg.quantity * multiplier
        scaled = [_times(size, g) for g in unit]
        source = None if any(g is None for g in unit) else leg.greeks_source
    else:
        # The same figures aggregate() sums: shares, or contracts times the multiplier.
        linear = leg.quantity * (multiplier if leg.sec_type in FUTURE_SEC_TYPES else 1.0)
        unit = [1.0, 0.0, 0.0, 0.0]  # per unit of the underlying
        scaled = [linear, 0.0, 0.0, 0.0]
        source = "ib"
    return PositionRow(
        timestamp=timestamp,
        account=account,
        api_mode=api_mode,
        conid=leg.conid,
        symbol=leg.local_symbol or leg.symbol,
        underlying=leg.symbol,
        sec_type=leg.sec_type,
        right=leg.right,
        strike=leg.strike,
        expiry=leg.expiry,
        multiplier=multiplier,
        position=leg.quantity,
        delta=scaled[0],
        gamma=scaled[1],
        vega=scaled[2],
        theta=scaled[3],
        unit_delta=unit[0],
        unit_gamma=unit[1],
        unit_vega=unit[2],
        unit_theta=unit[3],
        implied_vol=clean_price(leg.implied_vol),
        underlying_price=price,
        greeks_source=source,
        key=position_key(account, leg.conid, timestamp, api_mode),
    )


def position_rows(
    legs: Sequence[Leg],
    *,
    timestamp: datetime,
    api_mode: str,
    underlying_prices: Mapping[str, float] | None = None,
    omit: Collection[int] = (),
    account: str = ALL_ACCOUNTS,
) -> list[PositionRow]:
    """One row per open leg that :func:`aggregate` counts, in conid order.

    A leg's row carries :attr:`Leg.account`, else ``account`` (a single-account feed's
    legs need not name it). Its ``underlying_price``: for a stock or equity option the
    stock's from ``underlying_prices`` (by symbol), else the leg's own; for a future or
    futures option only the leg's own (its future's), never a price by symbol.
    """
    prices = underlying_prices or {}
    rows = []
    for leg in sorted(legs, key=lambda leg: (leg.account, leg.conid)):
        if leg.quantity == 0 or leg.sec_type not in SEC_TYPES:
            continue
        # Futures legs carry their own future's price; the by-symbol map holds stocks'.
        given = prices.get(leg.symbol) if leg.sec_type in BY_SYMBOL_SEC_TYPES else None
        price = clean_price(given) or clean_price(leg.underlying_price)
        omitted = leg.sec_type in OPTION_SEC_TYPES and leg.conid in omit
        rows.append(
            _position_row(
                leg,
                timestamp=timestamp,
                api_mode=api_mode,
                price=price,
                omitted=omitted,
                account=leg.account or account,
            )
        )
    return rows


def aggregate_accounts(
    legs: Sequence[Leg],
    *,
    timestamp: datetime,
    api_mode: str,
    accounts: Sequence[str] = (),
    underlying_prices: Mapping[str, float] | None = None,
    omit: Collection[int] = (),
) -> list[GreeksRow]:
    """Net rows per account, then the all-accounts rows (``account=""``) when there are several.

    ``accounts`` are the accounts the login reports on (a flat one gets :func:`flat_row`);
    legs are grouped by :attr:`Leg.account`. With one account this is exactly
    :func:`aggregate` for it, so a single-account login still writes one PORTFOLIO row a
    tick. Raises ValueError, like :func:`aggregate`, when no account has an open leg.
    """
    names = sorted(set(accounts) | {leg.account for leg in legs})
    if len(names) <= 1:
        only = names[0] if names else ALL_ACCOUNTS
        return aggregate(
            legs,
            account=only,
            timestamp=timestamp,
            api_mode=api_mode,
            underlying_prices=underlying_prices,
            omit=omit,
        )
    # The all-accounts rows first: raises when nothing at all is open (the feed's call).
    every = aggregate(
        legs,
        account=ALL_ACCOUNTS,
        timestamp=timestamp,
        api_mode=api_mode,
        underlying_prices=underlying_prices,
        omit=omit,
    )
    rows: list[GreeksRow] = []
    for name in names:
        own = [leg for leg in legs if leg.account == name]
        if not any(leg.quantity != 0 and leg.sec_type in SEC_TYPES for leg in own):
            rows.append(flat_row(name, timestamp, api_mode))
            continue
        rows.extend(
            aggregate(
                own,
                account=name,
                timestamp=timestamp,
                api_mode=api_mode,
                underlying_prices=underlying_prices,
                omit=omit,
            )
        )
    return rows + every
