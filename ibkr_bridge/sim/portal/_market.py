"""Market data snapshots: the pre-flight, field values as the gateway's strings, Greek faults."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from ibkr_bridge.sim.portal._accounts import AccountEndpoints
from ibkr_bridge.sim.portal._api import GREEK_FIELDS, IMPLIED_VOL_FIELD, SENTINEL_TEXT, error
from ibkr_bridge.sim.portal._format import format_price, format_size, is_regular_hours
from ibkr_bridge.sim.portfolio import Quote

QUOTES_KEPT: Final = 100  # per conid, for served_quotes()


def _number(text: str) -> float:
    return float(text.replace(",", ""))  # "6,012.25": the number the string says


class MarketData(AccountEndpoints):
    """``/iserver/marketdata/snapshot`` priced and valued by the portfolio at the clock's time."""

    def served_quotes(self, conid: int) -> tuple[Quote, ...]:
        """The latest bid (84), ask (86) and last (31) served for ``conid``, oldest first,
        as the numbers the strings say (two decimals)."""
        return tuple(self._quotes.get(conid, ()))

    async def _snapshot(self, request: web.Request) -> web.Response:
        if not self._authenticated:
            return error(400, "Init session first")
        if not self._bridge_ready:
            return error(400, "Bad Request: no bridge")
        raw_conids = request.query.get("conids", "")
        try:
            conids = [int(c) for c in raw_conids.split(",") if c.strip()]
        except ValueError:
            return error(400, f"Bad Request: conids must be numbers, got {raw_conids!r}")
        if not conids:
            return error(400, "Bad Request: conids required")
        fields = [f.strip() for f in request.query.get("fields", "31").split(",") if f.strip()]
        now = self._clock.now()
        rows = []
        for index, conid in enumerate(conids):
            if conid not in self._preflighted:
                # The pre-flight: the gateway subscribes and has nothing to say yet.
                self._preflighted.add(conid)
                rows.append({"conid": conid, "conidEx": str(conid)})
                continue
            rows.append(self._market_row(conid, index, fields, now))
        return web.json_response(rows)

    def _fmt_greek(self, value: float) -> str:
        if self.greek_decimals is None:
            return repr(float(value))
        return f"{value:.{self.greek_decimals}f}"

    def _market_row(
        self, conid: int, index: int, fields: Sequence[str], now: datetime
    ) -> dict[str, Any]:
        row: dict[str, Any] = {"conid": conid, "conidEx": str(conid)}
        try:
            inst = self.portfolio.instrument(conid)
            price = self.portfolio.price(conid, now)
        except KeyError:
            return row  # unknown contract, or an underlying without a price
        row["server_id"] = f"q{index}"
        row["_updated"] = int(now.timestamp() * 1000)
        rth = is_regular_hours(now)
        spread = max(0.01, round(price * 0.0005, 2))
        elapsed = max(0.0, self._clock.monotonic() - self._started_at)
        volume = (conid * 7919) % 40_000 + 900 + int(elapsed / 5.0)
        bid, ask = format_price(max(0.0, price - spread)), format_price(price + spread)
        last = format_price(price)
        values: dict[str, str] = {
            "31": ("" if rth else "C") + last,
            "84": bid,
            "86": ask,
            "85": format_size((conid % 13 + 1) * 100),
            "88": format_size((conid % 17 + 1) * 100),
            "87": format_size(volume),
            "55": inst.symbol,
            "7635": format_price(price),
            "6509": "RpB" if rth else "ZpB",
        }
        if inst.underlying_conid is not None:
            values["6457"] = str(inst.underlying_conid)
        quote = Quote(conid=conid, at=now, bid=_number(bid), ask=_number(ask), last=_number(last))
        self._quotes.setdefault(conid, deque(maxlen=QUOTES_KEPT)).append(quote)
        greeks = self.portfolio.greeks(conid, now)
        if greeks is not None:
            values["7308"] = self._fmt_greek(greeks.delta)
            values["7309"] = self._fmt_greek(greeks.gamma)
            values["7310"] = self._fmt_greek(greeks.theta)
            values["7311"] = self._fmt_greek(greeks.vega)
            values[IMPLIED_VOL_FIELD] = f"{greeks.implied_vol * 100:.1f}"
            if self._active("fixed") and (
                self._fixed_conids is None or conid in self._fixed_conids
            ):
                values.update(self._fixed_greeks)
            if self._active("sentinel") and (
                self._sentinel_conids is None or conid in self._sentinel_conids
            ):
                blanked = GREEK_FIELDS + ((IMPLIED_VOL_FIELD,) if self._sentinel_iv else ())
                for key in blanked:
                    if self._sentinel_mode == "missing":
                        del values[key]
                    else:
                        values[key] = SENTINEL_TEXT[self._sentinel_mode]
        for key in fields:
            if key in values:
                row[key] = values[key]
        return row
