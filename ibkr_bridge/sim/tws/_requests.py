"""Request handlers of the TWS simulator: one method per TWS API request it answers.

:meth:`Requests._dispatch` looks a request's message id up in ``_handlers``; a subclass
(a test's misbehaving Gateway) may override either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

from ibkr_bridge.sim.portfolio import NEW_YORK, Instrument
from ibkr_bridge.sim.tws import _codec as wire
from ibkr_bridge.sim.tws import _messages as msg
from ibkr_bridge.sim.tws._market import MarketData, min_tick
from ibkr_bridge.sim.tws._state import FARM_BROKEN, FARM_OK, MSG_CLIENT_IN_USE, Conn, log


class Requests(MarketData):
    """Answers the requests of started sessions (and ``startApi`` of new ones)."""

    def _dispatch(self, conn: Conn, fields: list[str]) -> None:
        msg_id = int(fields[0]) if fields[0].lstrip("-").isdigit() else -1
        if not conn.started and msg_id != 71:
            log.warning("connection %d: request %s before startApi, ignored", conn.id, msg_id)
            return
        handler = self._handlers.get(msg_id)
        if handler is None:
            log.info("client %s: request %s not simulated, ignored", conn.client_id, msg_id)
            return
        try:
            handler(self, conn, fields)
        except (ValueError, IndexError, KeyError) as exc:
            log.warning("client %s: malformed request %s: %r", conn.client_id, fields, exc)

    # -- session: startApi, ids, accounts list, time --------------------------------------

    def _start_api(self, conn: Conn, fields: list[str]) -> None:
        if conn.started:
            return
        client_id = int(fields[2])
        stale = self._stale_ids.get(client_id, -math.inf) > self._clock.monotonic()
        if client_id in self.client_ids or stale:
            log.info("client id %d already in use: error 326 and close", client_id)
            self._send_error(conn, -1, 326, MSG_CLIENT_IN_USE)
            conn.close()
            return
        conn.client_id = client_id
        conn.started = True
        self._write(conn, msg.managed_accounts(self.portfolio.accounts))
        self._write(conn, msg.next_valid_id(self._next_order_id))
        for code, text in FARM_BROKEN if self._outage else FARM_OK:
            self._send_error(conn, -1, code, text)

    def _req_ids(self, conn: Conn, fields: list[str]) -> None:
        self._write(conn, msg.next_valid_id(self._next_order_id))

    def _req_managed_accounts(self, conn: Conn, fields: list[str]) -> None:
        self._write(conn, msg.managed_accounts(self.portfolio.accounts))

    def _req_current_time(self, conn: Conn, fields: list[str]) -> None:
        self._write(conn, msg.current_time(int(self._clock.now().timestamp())))

    # -- positions and account values -----------------------------------------------------

    def _req_positions(self, conn: Conn, fields: list[str]) -> None:
        conn.positions_sub = True
        for pos in self.portfolio.positions():
            self._write(conn, self._position_msg(pos.account, pos.instrument, pos))
        self._write(conn, msg.position_end())

    def _cancel_positions(self, conn: Conn, fields: list[str]) -> None:
        conn.positions_sub = False

    def _req_account_updates(self, conn: Conn, fields: list[str]) -> None:
        subscribe = fields[2] not in ("0", "", "false", "False")
        account = fields[3] if len(fields) > 3 else ""
        if not subscribe:
            conn.account_sub = None
            return
        if not account and len(self.portfolio.accounts) == 1:
            account = self.portfolio.accounts[0]
        if account not in self.portfolio.accounts:
            self._send_error(conn, -1, 2100, "Requested account is not managed: " + account)
            return
        conn.account_sub = account
        self._send_account(conn, account)

    def _req_account_updates_multi(self, conn: Conn, fields: list[str]) -> None:
        req_id = int(fields[2])
        account = fields[3]
        model = fields[4] if len(fields) > 4 else ""
        accounts = self.portfolio.accounts if account in ("", "All") else (account,)
        conn.multi_subs[req_id] = account
        now = self._clock.now()
        for acct in accounts:
            if acct not in self.portfolio.accounts:
                continue
            for key, value, currency in self._account_values(acct, now):
                self._write(
                    conn, msg.account_update_multi(req_id, acct, model, key, value, currency)
                )
        self._write(conn, msg.account_update_multi_end(req_id))

    def _cancel_account_updates_multi(self, conn: Conn, fields: list[str]) -> None:
        conn.multi_subs.pop(int(fields[2]), None)

    def _req_account_summary(self, conn: Conn, fields: list[str]) -> None:
        req_id = int(fields[2])
        now = self._clock.now()
        for account in self.portfolio.accounts:
            for key, value, currency in self._account_values(account, now):
                self._write(conn, msg.account_summary(req_id, account, key, value, currency))
        self._write(conn, msg.account_summary_end(req_id))

    # -- orders and executions: this Gateway has none -------------------------------------

    def _req_executions(self, conn: Conn, fields: list[str]) -> None:
        self._write(conn, msg.exec_details_end(int(fields[2])))

    def _req_open_orders(self, conn: Conn, fields: list[str]) -> None:
        self._write(conn, msg.open_order_end())

    def _req_completed_orders(self, conn: Conn, fields: list[str]) -> None:
        self._write(conn, msg.completed_orders_end())

    # -- market data and contract details -------------------------------------------------

    def _req_market_data_type(self, conn: Conn, fields: list[str]) -> None:
        data_type = int(fields[2])
        if data_type not in (1, 2, 3, 4):
            raise ValueError(f"market data type {data_type}")
        conn.md_type = data_type
        for req_id in conn.subs:
            self._write(conn, msg.market_data_type(req_id, data_type))

    def _resolve(self, spec: wire.ContractSpec) -> list[Instrument]:
        if spec.con_id:
            try:
                inst = self.portfolio.instrument(spec.con_id)
            except KeyError:
                return []
            return [inst] if not spec.sec_type or spec.sec_type == inst.sec_type else []
        return self.portfolio.find_instruments(
            symbol=spec.symbol or None,
            sec_type=spec.sec_type or None,
            expiry=spec.expiry or None,
            strike=spec.strike or None,
            right=spec.right or None,
            currency=spec.currency or None,
            multiplier=float(spec.multiplier) if spec.multiplier else None,
            local_symbol=spec.local_symbol or None,
            trading_class=spec.trading_class or None,
        )

    def _req_mkt_data(self, conn: Conn, fields: list[str]) -> None:
        req_id = int(fields[2])
        spec, i = wire.parse_contract(fields, 3)
        if spec.sec_type == "BAG":
            i += 1 + 4 * int(fields[i])
        if fields[i] == "1":
            i += 3
        snapshot = fields[i + 2] == "1"
        if not spec.exchange:
            self._send_error(
                conn, req_id, 321, "Error validating request.-'bW' : cause - Please enter exchange"
            )
            return
        found = self._resolve(spec)
        if len(found) != 1:
            self._send_error(
                conn, req_id, 200, "No security definition has been found for the request"
            )
            return
        if req_id in conn.subs:
            self._send_error(conn, req_id, 322, f"Duplicate ticker id: {req_id}")
            return
        inst = found[0]
        self._write(conn, msg.market_data_type(req_id, conn.md_type))
        self._write(conn, msg.tick_req_params(req_id, min_tick(inst), "9c0001", 3))
        if snapshot:
            if not self._outage:
                self._send_ticks(conn, req_id, inst, first=True)
            self._write(conn, msg.tick_snapshot_end(req_id))
            return
        conn.subs[req_id] = inst.conid
        if not self._outage:
            self._send_ticks(conn, req_id, inst, first=True)

    def _cancel_mkt_data(self, conn: Conn, fields: list[str]) -> None:
        req_id = int(fields[2])
        if conn.subs.pop(req_id, None) is None:
            self._send_error(conn, req_id, 300, f"Can't find EId with tickerId:{req_id}")

    def _req_contract_details(self, conn: Conn, fields: list[str]) -> None:
        req_id = int(fields[2])
        spec, _ = wire.parse_contract(fields, 3)
        found = self._resolve(spec)
        if not found:
            self._send_error(
                conn, req_id, 200, "No security definition has been found for the request"
            )
            return
        for inst in found:
            self._write(conn, msg.contract_details(conn.version, req_id, inst, self._extra(inst)))
        self._write(conn, msg.contract_details_end(req_id))

    def _extra(self, inst: Instrument) -> msg.DetailsExtra:
        day = self._clock.now().astimezone(NEW_YORK).strftime("%Y%m%d")
        underlying: Instrument | None = None
        if inst.underlying_conid is not None:
            underlying = self.portfolio.instrument(inst.underlying_conid)
        if inst.sec_type == "STK":
            name = inst.symbol
        else:
            parts = [inst.symbol, inst.expiry or "", inst.wire_multiplier]
            if inst.strike is not None:
                parts.insert(2, f"{wire.fmt(inst.strike)} {inst.right}")
            name = " ".join(parts)
        return msg.DetailsExtra(
            min_tick=min_tick(inst),
            long_name=name,
            valid_exchanges=inst.exchange if inst.exchange != "SMART" else "SMART,ARCA,NYSE",
            trading_hours=f"{day}:0400-{day}:2000",
            liquid_hours=f"{day}:0930-{day}:1600",
            stock_type="ETF" if inst.sec_type == "STK" else "",
            under_symbol=underlying.symbol if underlying is not None else "",
            under_sec_type=underlying.sec_type if underlying is not None else "",
        )

    def _log_only(self, conn: Conn, fields: list[str]) -> None:
        log.info("client %s sent request %s (no reply simulated)", conn.client_id, fields[0])

    # A ClassVar, not Final: a subclass (a misbehaving Gateway in a test) may replace it.
    _handlers: ClassVar[Mapping[int, Callable[[Requests, Conn, list[str]], None]]] = {
        71: _start_api,
        1: _req_mkt_data,
        2: _cancel_mkt_data,
        5: _req_open_orders,
        6: _req_account_updates,
        7: _req_executions,
        8: _req_ids,
        9: _req_contract_details,
        15: _log_only,  # reqAutoOpenOrders
        16: _req_open_orders,  # reqAllOpenOrders
        17: _req_managed_accounts,
        49: _req_current_time,
        58: _log_only,  # reqGlobalCancel
        59: _req_market_data_type,
        61: _req_positions,
        62: _req_account_summary,
        63: _log_only,  # cancelAccountSummary
        64: _cancel_positions,
        76: _req_account_updates_multi,
        77: _cancel_account_updates_multi,
        99: _req_completed_orders,
    }
