"""The PORTAL feed's positions: ``/portfolio/{account}/positions`` read page by page and parsed.

A position without conid, quantity or asset class, or a derivative without its multiplier
(it would be off by a factor of 50 or 100), makes the whole read fail: the previous
positions are kept and one ``garbage`` event says why. A change of the book is reported as
``positions_changed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from attrs import evolve

from ibkr_bridge.core.greeks import (
    FUTURE_SEC_TYPES,
    OPTION_SEC_TYPES,
    multiplier_from,
    option_right,
    parse_portal_number,
)
from ibkr_bridge.core.redaction import gateway_text
from ibkr_bridge.feeds.portal._keeper import _SessionKeeper
from ibkr_bridge.feeds.portal._wire import (
    MAX_PAGES,
    PAGE_SIZE,
    POSITIONS,
    PortalPosition,
    _as_float,
    _as_int,
    _BadRow,
    _error_text,
)


class _PositionsReader(_SessionKeeper):
    """The positions layer of the PORTAL feed (its state is set by PortalFeed)."""

    _positions: dict[int, PortalPosition] | None
    _positions_at: float

    _by_account: dict[str, dict[int, PortalPosition]]

    def _parse_position(self, raw: Any, wanted: str) -> PortalPosition | None:
        if not isinstance(raw, dict):
            raise _BadRow(f"a position that is not an object: {gateway_text(repr(raw), 60)}")
        conid = _as_int(raw.get("conid"))
        quantity = _as_float(raw.get("position"))
        asset = raw.get("assetClass")
        if conid is None or quantity is None or not isinstance(asset, str) or not asset:
            raise _BadRow(
                "a position without conid, position or assetClass: " + gateway_text(repr(raw), 120)
            )
        account = raw.get("acctId")
        if isinstance(account, str) and account and account != wanted:
            return None
        if quantity == 0:
            return None  # closed today, still listed
        sec_type = asset.strip().upper()
        raw_multiplier = raw.get("multiplier")
        if sec_type in OPTION_SEC_TYPES | FUTURE_SEC_TYPES:
            # A derivative without its multiplier would be off by a factor of 50 or 100.
            number = _as_float(raw_multiplier)
            if number is None or number <= 0:
                raise _BadRow(f"{sec_type} {conid} has no multiplier ({raw_multiplier!r})")
            multiplier = number
        else:
            try:
                multiplier = multiplier_from(
                    raw_multiplier if isinstance(raw_multiplier, str | int | float) else None
                )
            except ValueError as exc:
                raise _BadRow(str(exc)) from None
        underlying = _as_int(raw.get("undConid")) or None
        if underlying is None and sec_type not in OPTION_SEC_TYPES:
            underlying = conid  # a stock or future is its own underlying
        symbol = next(
            (
                str(value).strip()
                for value in (
                    raw.get("undSym") if sec_type not in ("STK", "ETF") else None,
                    raw.get("ticker"),
                    str(raw.get("contractDesc") or "").split(" ")[0],
                )
                if isinstance(value, str) and value.strip()
            ),
            str(conid),
        )
        right, strike, expiry = _option_terms(raw) if sec_type in OPTION_SEC_TYPES else (None,) * 3
        return PortalPosition(
            conid, symbol, sec_type, quantity, multiplier, underlying, right, strike, expiry
        )

    async def _refresh_positions(self) -> bool:
        """Re-read every page of positions of the account (of each of several, one after
        another through the same rate limiter); False (old positions kept) if that failed."""
        account = self._account
        if account is None:
            return False
        if not self._portfolio_ready:
            await self._portfolio_accounts()
        self._positions_at = self._clock.monotonic()
        by_account: dict[str, dict[int, PortalPosition]] = {}
        for name in self._accounts or (account,):
            read = await self._read_positions(name)
            if read is None:
                return False
            by_account[name] = read
        # One entry per conid for the market data (a conid held twice is one subscription),
        # its quantity the accounts' sum: the all-accounts book.
        parsed: dict[int, PortalPosition] = {}
        for read in by_account.values():
            for conid, position in read.items():
                held = parsed.get(conid)
                parsed[conid] = (
                    position
                    if held is None
                    else evolve(held, quantity=held.quantity + position.quantity)
                )
        before, before_by_account = self._positions, self._by_account
        self._by_account = by_account
        self._positions = parsed
        # Compared account by account: a change in one account of a conid another account
        # also holds is a change, even where the sum stays the same.
        if before is not None and before_by_account != by_account:
            self._listener.feed_event(
                "positions_changed",
                f"positions changed: {len(before)} -> {len(parsed)} open",
                detail=_changes(before_by_account, by_account),
            )
        return True

    async def _read_positions(self, account: str) -> dict[int, PortalPosition] | None:
        """Every page of ``account``'s open positions by conid; None if that failed."""
        rows: list[Any] = []
        for page in range(MAX_PAGES):
            path = f"/portfolio/{quote(account, safe='')}/positions/{page}"
            reply = await self._call("GET", POSITIONS, path)
            if reply.status == 401:
                await self._check_session("HTTP 401 on positions", lost=True)
                return None
            if reply.status != 200:
                if reply.status == 400:
                    self._portfolio_ready = False  # e.g. "/portfolio/accounts first"
                self._report(
                    "gateway_error",
                    f"positions answered HTTP {reply.status} {_error_text(reply.data)}",
                    key="positions_error",
                    detail={"endpoint": POSITIONS, "status": reply.status},
                )
                return None
            if not isinstance(reply.data, list):
                self._garbage(POSITIONS, reply, "not a list")
                return None
            rows.extend(reply.data)
            if len(reply.data) < PAGE_SIZE:
                break
        parsed: dict[int, PortalPosition] = {}
        try:
            for raw in rows:
                position = self._parse_position(raw, account)
                if position is not None:
                    parsed[position.conid] = position
        except _BadRow as exc:
            self._report(
                "garbage",
                f"positions skipped: {exc}",
                key=f"garbage:{POSITIONS}",
                detail={"endpoint": POSITIONS},
            )
            return None
        return parsed


def _changes(
    before: Mapping[str, Mapping[int, PortalPosition]],
    after: Mapping[str, Mapping[int, PortalPosition]],
) -> dict[str, list[Any]]:
    """Conids opened, closed or changed in any account, and the accounts that changed."""
    old = {c for held in before.values() for c in held}
    new = {c for held in after.values() for c in held}
    accounts = sorted(a for a in {*before, *after} if before.get(a) != after.get(a))
    changed = {
        c
        for c in old & new
        if any((before.get(a) or {}).get(c) != (after.get(a) or {}).get(c) for a in accounts)
    }
    return {
        "added": sorted(new - old),
        "removed": sorted(old - new),
        "changed": sorted(changed),
        "accounts": accounts,
    }


def _option_terms(raw: Mapping[str, Any]) -> tuple[str | None, float | None, str | None]:
    """``putOrCall``, ``strike`` and ``expiry`` of a position row; None where absent or odd."""
    right = option_right(raw.get("putOrCall"))
    strike = parse_portal_number(raw.get("strike"))
    expiry = str(raw.get("expiry") or "").strip()
    return (
        right,
        strike if strike is not None and strike > 0 else None,
        expiry if len(expiry) == 8 and expiry.isdigit() else None,
    )
