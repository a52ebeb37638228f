"""The end of a snapshot both feeds share: judge the option legs, then a flat row or aggregate."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime

from ibkr_bridge.core.greeks import (
    SEC_TYPES,
    GreeksRule,
    Leg,
    LegGreeks,
    LegsVerdict,
    aggregate,
    flat_row,
    judge_legs,
)
from ibkr_bridge.core.records import GreeksRow


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
) -> tuple[LegsVerdict, list[GreeksRow] | None]:
    """The staleness verdict on ``judged``, and the rows for ``now`` (None: do not write).

    A book with no leg that carries Greeks is genuinely flat: one flat row. ``prices`` (the
    underlyings' prices by symbol) is asked only when there is something to aggregate.
    """
    verdict = judge_legs(judged, rule, broken_farms=broken_farms)
    if not verdict.write:
        return verdict, None  # no data after the request yet, stale, or a leg missing (skip)
    if not any(leg.sec_type in SEC_TYPES for leg in legs):
        return verdict, [flat_row(account, now, mode)]
    rows = aggregate(
        legs,
        account=account,
        timestamp=now,
        api_mode=mode,
        underlying_prices=prices(),
        omit=verdict.omit,
    )
    return verdict, rows
