"""The Greeks rows the drain and spill benchmarks (and recovery.py) write: a 5 s series."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from ibkr_bridge.core.records import GreeksRow, new_key

T0 = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)


def make_rows(
    start: int,
    count: int,
    *,
    base: datetime = T0,
    account: str = "DU1234567",
    seed: str | None = None,
) -> list[GreeksRow]:
    """Rows ``start .. start+count-1`` of a 5-second series.

    With ``seed`` the keys are derived from it and the row number (random-looking hex like
    the real uuid4 keys, so the unique index sees the same scattered inserts), and the same
    call returns the same rows: what a benchmark drains and what it COPYs raw are one set.
    """

    def key(i: int) -> str:
        if seed is None:
            return new_key()
        return hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=16).hexdigest()

    return [
        GreeksRow(
            timestamp=base + timedelta(seconds=5 * i),
            account=account,
            api_mode="SOCKET",
            delta=1234.5 + i * 0.001,
            gamma=12.25,
            vega=-3456.75,
            theta=-987.125,
            underlying_price=512.34,
            dollar_delta=632_000.0,
            legs=40,
            legs_missing=0,
            key=key(i),
        )
        for i in range(start, start + count)
    ]
