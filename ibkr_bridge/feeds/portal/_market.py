"""The PORTAL feed's market data: the snapshot pre-flight, the polls, the underlyings' prices.

The first ``/iserver/marketdata/snapshot`` call per conid only subscribes and answers
without fields (the pre-flight); later calls bring the fields, timed by the row's own
``_updated`` when the gateway sends one. A 400 ("no bridge") means ``/iserver/accounts``
must come first again; a 401 asks the auth status why, and ends the connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable
from datetime import UTC, datetime

from ibkr_bridge.core.errors import GatewayError
from ibkr_bridge.core.greeks import (
    BY_SYMBOL_SEC_TYPES,
    OPTION_SEC_TYPES,
    GreekFields,
    Leg,
    LegGreeks,
)
from ibkr_bridge.feeds.portal._fields import (
    SNAPSHOT_FIELDS,
    has_greeks,
    implied_vol,
    option_greeks,
    option_mid,
    snapshot_fields,
    traded_price,
)
from ibkr_bridge.feeds.portal._positions import _PositionsReader
from ibkr_bridge.feeds.portal._wire import (
    CONIDS_PER_SNAPSHOT,
    SNAPSHOT,
    PortalPosition,
    _as_int,
    _describe,
    _error_text,
    _Market,
    _Reply,
)

log = logging.getLogger(__name__)


class _MarketData(_PositionsReader):
    """The market-data layer of the PORTAL feed (its state is set by PortalFeed)."""

    poll_interval: float
    positions_interval: float
    stale_after: float
    _market: dict[int, _Market]
    _greeks_at: dict[int, datetime]
    _leg_since: dict[int, float]

    def _wanted_conids(self) -> list[int]:
        positions = self._positions or {}
        wanted = set(positions)
        wanted.update(p.underlying_conid for p in positions.values() if p.underlying_conid)
        return sorted(wanted)

    async def _poll_snapshots(self) -> None:
        conids = self._wanted_conids()
        for start in range(0, len(conids), CONIDS_PER_SNAPSHOT):
            if self._lost:
                return
            if not self._bridge_ready:
                await self._iserver_accounts()
            batch = conids[start : start + CONIDS_PER_SNAPSHOT]
            reply = await self._call(
                "GET",
                SNAPSHOT,
                "/iserver/marketdata/snapshot",
                params={"conids": ",".join(map(str, batch)), "fields": ",".join(SNAPSHOT_FIELDS)},
            )
            await self._take_snapshot_reply(reply)

    async def _take_snapshot_reply(self, reply: _Reply) -> None:
        if reply.status == 401:
            await self._check_session("HTTP 401 on snapshot", lost=True)
            return
        if reply.status == 400:
            # "no bridge" / "Init session first": /iserver/accounts must come (again) first,
            # unless the session itself is gone.
            self._bridge_ready = False
            await self._check_session("HTTP 400 on snapshot", lost=False)
            self._report(
                "gateway_error",
                f"snapshot answered HTTP 400 {_error_text(reply.data)}",
                key="snapshot_400",
                detail={"endpoint": SNAPSHOT, "status": 400},
            )
            return
        if reply.status != 200:
            if reply.status != 429:
                self._report(
                    "gateway_error",
                    f"snapshot answered HTTP {reply.status} {_error_text(reply.data)}",
                    key=f"snapshot_{reply.status}",
                    detail={"endpoint": SNAPSHOT, "status": reply.status},
                )
            return
        if not isinstance(reply.data, list):
            self._garbage(SNAPSHOT, reply, "not a list")
            return
        received = self._clock.now()
        for item in reply.data:
            conid = _as_int(item.get("conid")) if isinstance(item, dict) else None
            if conid is None or not isinstance(item, dict):
                self._garbage(SNAPSHOT, reply, "a row without a conid")
                continue
            fields = snapshot_fields(item)
            updated_ms = _as_int(item.get("_updated"))
            if not fields and updated_ms is None:
                continue  # the pre-flight answer: subscribed, no data yet
            updated = received
            if updated_ms is not None:
                with contextlib.suppress(OverflowError, OSError, ValueError):
                    updated = datetime.fromtimestamp(updated_ms / 1000.0, UTC)
            self._market[conid] = _Market(updated, fields)
            if has_greeks(fields):
                # A Greeks "tick": its age is what the staleness rule judges.
                self._greeks_at[conid] = updated

    async def _poll_loop(self) -> None:
        start = self._clock.monotonic()
        k = 0
        while not self._lost:
            k = max(k + 1, math.floor((self._clock.monotonic() - start) / self.poll_interval) + 1)
            await self._clock.sleep_until(start + k * self.poll_interval)
            try:
                if self._clock.monotonic() - self._positions_at >= self.positions_interval:
                    await self._refresh_positions()
                await self._poll_snapshots()
            except (GatewayError, TimeoutError) as exc:
                self._report("gateway_error", f"polling failed: {_describe(exc)}", key="poll")
            except Exception as exc:  # a bug here must not end polling silently
                log.exception("portal poll failed")
                self._report("gateway_error", f"polling failed: {_describe(exc)}", key="poll")

    def _legs(
        self, positions: Iterable[PortalPosition], now: datetime
    ) -> tuple[list[Leg], list[LegGreeks]]:
        """Every position as a leg with its Greeks, and each option leg's age for judging."""
        mono = self._clock.monotonic()
        legs: list[Leg] = []
        judged: list[LegGreeks] = []
        for pos in positions:
            greeks: GreekFields = {}
            if pos.sec_type in OPTION_SEC_TYPES:
                market = self._market.get(pos.conid)
                since = self._leg_since.setdefault(pos.conid, mono)
                # Timed by the data's own timestamp (_updated) when the gateway sends one.
                greeks_at = self._greeks_at.get(pos.conid)
                judged.append(
                    LegGreeks(
                        conid=pos.conid,
                        name=f"{pos.symbol} {pos.sec_type}",
                        age=None if greeks_at is None else (now - greeks_at).total_seconds(),
                        waited=mono - since,
                    )
                )
                if market is not None:
                    greeks = option_greeks(market.fields)
                    implied = implied_vol(market.fields)
                    mid = option_mid(market.fields)
                else:
                    implied = mid = None
            else:
                implied = mid = None
            # Its own underlying's price: a FOP's future by undConid, a future's own.
            greeks["underlying_price"] = self._price_of(pos.underlying_conid, now)
            legs.append(
                Leg(
                    conid=pos.conid,
                    symbol=pos.symbol,
                    sec_type=pos.sec_type,
                    quantity=pos.quantity,
                    multiplier=pos.multiplier,
                    **greeks,
                    # Client Portal strings carry no -2 sentinel: "-2.000" is a real theta.
                    ib_sentinels=False,
                    right=pos.right,
                    strike=pos.strike,
                    expiry=pos.expiry,
                    implied_vol=implied,
                    option_price=mid,
                )
            )
        return legs, judged

    def _fresh(self, conid: int, now: datetime) -> _Market | None:
        market = self._market.get(conid)
        if market is None or (now - market.updated).total_seconds() > self.stale_after:
            return None
        return market

    def _price_of(self, conid: int | None, now: datetime) -> float | None:
        """The fresh traded price of ``conid``, if polled."""
        market = self._fresh(conid, now) if conid is not None else None
        return traded_price(market.fields) if market is not None else None

    def _underlying_prices(
        self, positions: Iterable[PortalPosition], now: datetime
    ) -> dict[str, float]:
        """Stocks' prices by symbol, for stock and equity-option legs only: a future is
        not named by its symbol (ESZ6 and ESH7 are both "ES", and so is Eversource's
        stock), so futures legs carry their own future's price (:meth:`_legs`)."""
        prices: dict[str, float] = {}
        for pos in sorted(positions, key=lambda p: p.conid):
            if pos.symbol in prices or pos.sec_type not in BY_SYMBOL_SEC_TYPES:
                continue
            price = self._price_of(pos.underlying_conid, now)
            if price is not None:
                prices[pos.symbol] = price
        return prices
