"""The account endpoints: ``/iserver/accounts``, ``/portfolio/accounts`` and positions pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from ibkr_bridge.sim.portal._api import PAGE_SIZE, SERVER_INFO, error
from ibkr_bridge.sim.portal._auth import SessionEndpoints
from ibkr_bridge.sim.portal._format import contract_desc, fmt_plain
from ibkr_bridge.sim.portfolio import Position


class AccountEndpoints(SessionEndpoints):
    """The handlers that list accounts and page through their positions."""

    async def _iserver_accounts(self, request: web.Request) -> web.Response:
        refused = self._need_brokerage()
        if refused is not None:
            return refused
        self._bridge_ready = True
        accounts = list(self.portfolio.accounts)
        return web.json_response(
            {
                "accounts": accounts,
                "acctProps": {
                    a: {"hasChildAccounts": False, "supportsCashQty": True, "isProp": False}
                    for a in accounts
                },
                "aliases": {a: a for a in accounts},
                "allowFeatures": {"showGFIS": True, "allowCrypto": False},
                "chartPeriods": {"STK": ["*"], "OPT": ["2h", "1d", "2d", "1w", "1m"]},
                "groups": ["All"] if len(accounts) > 1 else [],
                "profiles": [],
                "selectedAccount": accounts[0],
                "serverInfo": dict(SERVER_INFO),
                "sessionId": self._session_token[:16],
                "isFt": False,
                "isPaper": all(a.startswith("D") for a in accounts),
            }
        )

    async def _portfolio_accounts(self, request: web.Request) -> web.Response:
        refused = self._need_brokerage()
        if refused is not None:
            return refused
        self._portfolio_ready = True
        return web.json_response([self._account_obj(a) for a in self.portfolio.accounts])

    def _account_obj(self, account: str) -> dict[str, Any]:
        return {
            "id": account,
            "PrepaidCrypto-Z": False,
            "PrepaidCrypto-P": False,
            "brokerageAccess": True,
            "accountId": account,
            "accountVan": account,
            "accountTitle": f"Simulated {account}",
            "displayName": account,
            "accountAlias": None,
            "accountStatus": int(self._sso_login_wall.timestamp() * 1000),
            "currency": "USD",
            "type": "DEMO" if account.startswith("D") else "INDIVIDUAL",
            "tradingType": "PMRGN",
            "businessType": "IB_PROSERVE",
            "ibEntity": "IBLLC-US",
            "faclient": False,
            "clearingStatus": "O",
            "covestor": False,
            "noClientTrading": False,
            "trackVirtualFXPortfolio": True,
            "parent": {"mmc": [], "accountId": "", "isMParent": False, "isMChild": False},
            "desc": account,
        }

    async def _positions(self, request: web.Request) -> web.Response:
        refused = self._need_brokerage()
        if refused is not None:
            return refused
        if not self._portfolio_ready:
            return error(400, "Bad Request: call /portfolio/accounts first")
        account = request.match_info["acct"]
        try:
            page = int(request.match_info["page"])
        except ValueError:
            return error(400, "Bad Request: page must be a number")
        if account not in self.portfolio.accounts:
            return error(500, f"Account {account} is not found or not authorized")
        now = self._clock.now()
        held = sorted(self.portfolio.positions(account), key=lambda p: p.conid)
        chunk = held[page * PAGE_SIZE : (page + 1) * PAGE_SIZE] if page >= 0 else []
        return web.json_response([self._position_row(p, now) for p in chunk])

    def _position_row(self, pos: Position, now: datetime) -> dict[str, Any]:
        inst = pos.instrument
        derivative = inst.sec_type != "STK"
        option = inst.is_option
        price = self.portfolio.price(inst.conid, now)
        value = self.portfolio.market_value(pos, now)
        cost_multiplier = inst.multiplier if derivative else 1.0
        und = inst.underlying_conid or 0
        desc = contract_desc(inst)
        return {
            "acctId": pos.account,
            "conid": inst.conid,
            "contractDesc": desc,
            "position": pos.quantity,
            "mktPrice": price,
            "mktValue": round(value, 2),
            "currency": inst.currency,
            "avgCost": pos.avg_cost,
            "avgPrice": pos.avg_cost / cost_multiplier,
            "realizedPnl": 0.0,
            "unrealizedPnl": round(self.portfolio.unrealized_pnl(pos, now), 2),
            "exchs": None,
            "expiry": inst.expiry if derivative else None,
            "putOrCall": inst.right if option else None,
            "multiplier": inst.multiplier if derivative else 0.0,
            "strike": fmt_plain(inst.strike) if inst.strike is not None else "0",
            "exerciseStyle": "AMERICAN" if inst.sec_type == "OPT" else None,
            "conExchMap": [],
            "assetClass": inst.sec_type,
            "undConid": und,
            "model": "",
            "time": 0,
            "chineseName": None,
            "allExchanges": inst.exchange,
            "listingExchange": inst.primary_exchange or inst.exchange,
            "countryCode": "US",
            "name": inst.symbol,
            "lastTradingDay": inst.expiry if derivative else None,
            "group": None,
            "sector": None,
            "sectorGroup": None,
            "ticker": inst.symbol,
            "type": "ETF" if inst.sec_type == "STK" else None,
            "undComp": None,
            "undSym": inst.symbol if derivative else None,
            "fullName": desc,
            "pageSize": PAGE_SIZE,
            "isUS": inst.currency == "USD",
            "isEventContract": False,
        }
