"""Market data and account pushes of the TWS simulator: ticks, Greeks, positions.

Prices and Greeks come from the :class:`~ibkr_bridge.sim.portfolio.Portfolio`; the
stream loop moves it every ``tick_interval`` and sends subscribed sessions fresh ticks,
and position changes go out to sessions subscribed to positions or account updates.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import datetime
from typing import Final

from ibkr_bridge.sim.portfolio import NEW_YORK, Instrument, Position, PositionChange, Quote
from ibkr_bridge.sim.tws import _codec as wire
from ibkr_bridge.sim.tws import _messages as msg
from ibkr_bridge.sim.tws._state import Conn, GatewayState

# tickPrice / tickSize / tickOptionComputation types: (live, delayed)
_BID: Final = (1, 66)
_ASK: Final = (2, 67)
_LAST: Final = (4, 68)
_CLOSE: Final = (9, 75)
_BID_SIZE: Final = (0, 69)
_ASK_SIZE: Final = (3, 70)
_LAST_SIZE: Final = (5, 71)
_VOLUME: Final = (8, 74)
MODEL_GREEKS: Final = (13, 83)
QUOTES_KEPT: Final = 100  # per conid, for served_quotes()


def min_tick(inst: Instrument) -> float:
    return {"FUT": 0.25, "FOP": 0.05}.get(inst.sec_type, 0.01)


def _floor_tick(value: float, tick: float) -> float:
    # The epsilon keeps 600.01 from flooring to 600.00 through binary rounding.
    return round(math.floor(value / tick + 1e-9) * tick, 6)


def _ceil_tick(value: float, tick: float) -> float:
    return round(math.ceil(value / tick - 1e-9) * tick, 6)


def _near_tick(value: float, tick: float) -> float:
    return round(round(value / tick) * tick, 6)


class MarketData(GatewayState):
    """Sends ticks, Greeks, positions and account values to the sessions."""

    # -- market data ----------------------------------------------------------------------

    def served_quotes(self, conid: int) -> tuple[Quote, ...]:
        """The latest quotes (bid, ask, last ticks) sent for ``conid``, oldest first."""
        return tuple(self._quotes.get(conid, ()))

    def _send_ticks(self, conn: Conn, req_id: int, inst: Instrument, first: bool) -> None:
        now = self._clock.now()
        delayed = 1 if conn.md_type in (3, 4) else 0
        price = self.portfolio.price(inst.conid, now)
        tick = min_tick(inst)
        half_spread = max(tick, price * 0.0005)
        bid = max(tick, _floor_tick(price - half_spread, tick))
        ask = max(round(bid + tick, 6), _ceil_tick(price + half_spread, tick))
        last = max(tick, _near_tick(price, tick))
        bid, ask, last = self._fixed_quotes.get(inst.conid, (bid, ask, last))
        quote = Quote(conid=inst.conid, at=now, bid=bid, ask=ask, last=last)
        self._quotes.setdefault(inst.conid, deque(maxlen=QUOTES_KEPT)).append(quote)
        lot = 100 if inst.sec_type == "STK" else 1
        bid_size = float(self._rng.randint(1, 50) * lot)
        ask_size = float(self._rng.randint(1, 50) * lot)
        last_size = float(self._rng.randint(1, 10) * lot)
        volume = self._volume.get(inst.conid, float(self._rng.randint(100, 5000) * lot))
        volume += last_size
        self._volume[inst.conid] = volume
        self._write(conn, msg.tick_price(req_id, _BID[delayed], bid, bid_size))
        self._write(conn, msg.tick_price(req_id, _ASK[delayed], ask, ask_size))
        self._write(conn, msg.tick_price(req_id, _LAST[delayed], last, last_size))
        self._write(conn, msg.tick_size(req_id, _VOLUME[delayed], volume))
        if first:
            close = _near_tick(self._closes.get(inst.conid, price), tick)
            self._write(conn, msg.tick_price(req_id, _CLOSE[delayed], close, 0.0))
        if inst.is_option:
            self._send_greeks(conn, req_id, inst, now, MODEL_GREEKS[delayed])

    def _send_greeks(
        self, conn: Conn, req_id: int, inst: Instrument, now: datetime, tick_type: int
    ) -> None:
        mode = self._sentinel
        if mode == "missing" or inst.conid in self._withheld:
            return
        if mode == "minus2":
            values: list[wire.Field] = [-1.0, -2.0, -1.0, -1.0, -2.0, -2.0, -2.0, -1.0]
        elif mode == "dblmax":
            values = [wire.UNSET_DOUBLE] * 8
        elif mode == "nan":
            values = [math.nan] * 8
        else:
            g = self.portfolio.greeks(inst.conid, now)
            if g is None:
                return
            vega, theta = (-2.0, -2.0) if mode == "vega_theta" else (g.vega, g.theta)
            values = [
                g.implied_vol,
                g.delta,
                g.option_price,
                0.0,
                g.gamma,
                vega,
                theta,
                g.underlying_price,
            ]
        self._write(conn, msg.tick_option_computation(req_id, tick_type, 0, *values))

    async def _stream_loop(self) -> None:
        last = self._clock.monotonic()
        last_account = last
        while True:
            await self._clock.sleep(self.tick_interval)
            mono = self._clock.monotonic()
            self.portfolio.step(mono - last, now=self._clock.now())
            last = mono
            if self.frozen or self._outage:
                continue
            for conn in self._started():
                for req_id, conid in list(conn.subs.items()):
                    self._send_ticks(conn, req_id, self.portfolio.instrument(conid), first=False)
            if self.account_interval > 0 and mono - last_account >= self.account_interval:
                last_account = mono
                for conn in self._started():
                    if conn.account_sub is not None:
                        self._send_account(conn, conn.account_sub)

    # -- position pushes ------------------------------------------------------------------

    def _position_msg(self, account: str, inst: Instrument, pos: Position | None) -> bytes:
        quantity = pos.quantity if pos is not None else 0.0
        avg_cost = pos.avg_cost if pos is not None else 0.0
        return msg.position(account, inst, quantity, avg_cost)

    def _portfolio_msg(self, pos: Position, now: datetime) -> bytes:
        price = self.portfolio.price(pos.conid, now)
        return msg.portfolio_value(
            pos.instrument,
            pos.quantity,
            price,
            self.portfolio.market_value(pos, now),
            pos.avg_cost,
            self.portfolio.unrealized_pnl(pos, now),
            0.0,
            pos.account,
        )

    def _on_position_change(self, change: PositionChange) -> None:
        inst = self.portfolio.instrument(change.conid)
        now = self._clock.now()
        for conn in self._started():
            if conn.positions_sub:
                self._write(conn, self._position_msg(change.account, inst, change.after))
            if conn.account_sub != change.account:
                continue
            if change.after is not None:
                self._write(conn, self._portfolio_msg(change.after, now))
            else:
                # A closed position is reported once more with quantity 0.
                price = self.portfolio.price(inst.conid, now)
                closed = msg.portfolio_value(inst, 0.0, price, 0.0, 0.0, 0.0, 0.0, change.account)
                self._write(conn, closed)

    # -- account updates ------------------------------------------------------------------

    def _send_account(self, conn: Conn, account: str) -> None:
        now = self._clock.now()
        for key, value, currency in self._account_values(account, now):
            self._write(conn, msg.account_value(key, value, currency, account))
        for pos in self.portfolio.positions(account):
            self._write(conn, self._portfolio_msg(pos, now))
        self._write(conn, msg.account_time(now.astimezone(NEW_YORK).strftime("%H:%M")))
        self._write(conn, msg.account_download_end(account))

    def _account_values(self, account: str, now: datetime) -> list[tuple[str, str, str]]:
        positions = self.portfolio.positions(account)
        values = [self.portfolio.market_value(p, now) for p in positions]
        unrealized = sum(self.portfolio.unrealized_pnl(p, now) for p in positions)
        cash = self.portfolio.cash(account)
        net = cash + sum(values)
        gross = sum(abs(v) for v in values)
        money = [
            ("NetLiquidation", net),
            ("TotalCashValue", cash),
            ("GrossPositionValue", gross),
            ("UnrealizedPnL", unrealized),
            ("RealizedPnL", 0.0),
            ("AvailableFunds", net * 0.5),
            ("ExcessLiquidity", net * 0.6),
            ("BuyingPower", net * 2.0),
            ("EquityWithLoanValue", net),
        ]
        out = [
            ("AccountCode", account, ""),
            ("AccountType", "INDIVIDUAL", ""),
            ("Currency", "USD", "USD"),
        ]
        out += [(key, f"{value:.2f}", "USD") for key, value in money]
        return out
