"""IB's message codes as the SOCKET feed hears them, and what each one does to the session.

:func:`route_error` turns one ``errorEvent`` into what the listener hears: 326 (clientId in
use) and 1300 end the connection, 1100/1101/1102 are data lost and restored, 2103-2158 are
farm notices (a broken market-data farm makes every leg's Greeks stale), and the rest are
logged as errors or, for 2100-2199, warnings.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Final

from ib_async import Contract

from ibkr_bridge.core.errors import GatewayError
from ibkr_bridge.core.records import Status
from ibkr_bridge.core.redaction import gateway_text

if TYPE_CHECKING:
    from ibkr_bridge.feeds.socket._session import _Session

log = logging.getLogger(__name__)

# IB message codes (see docs: TWS API message codes).
CLIENT_ID_IN_USE: Final = 326
CONNECTIVITY_LOST: Final = 1100
RESTORED_DATA_LOST: Final = 1101
RESTORED_DATA_KEPT: Final = 1102
SOCKET_PORT_RESET: Final = 1300
NO_SUCH_TICKER: Final = 300
FARM_BROKEN: Final = frozenset({2103, 2105, 2157})
# 2107/2108: a farm is idle but connects on demand; as harmless as "OK".
FARM_OK: Final = frozenset({2104, 2106, 2158, 2107, 2108})
# Only a market-data farm carries Greeks: 2103 makes every leg's Greeks stale until that
# farm is OK again (2104, or 2108 "inactive, available on demand"). Historical (2105/2106)
# and security-definition (2157/2158) farms are logged only.
MARKET_FARM_BROKEN: Final = 2103
MARKET_FARM_OK: Final = frozenset({2104, 2108})

_FARM_NAME: Final = re.compile(r"(?::|upon demand\.)\s*(\S+)\s*$")


def farm_name(message: str) -> str:
    """The farm an IB 210x notice names: "...is broken:usfarm" and 2108's "...available
    upon demand.usfarm" both give "usfarm"."""
    match = _FARM_NAME.search(message)
    return match[1] if match else message.strip()


def route_error(
    session: _Session, req_id: int, code: int, message: str, contract: Contract | None
) -> None:
    """Act on one of IB's ``errorEvent`` messages for an open ``session``."""
    # The Gateway's text goes into api_logs and the log: never verbatim or unbounded.
    message = gateway_text(message)
    detail: dict[str, Any] = {"code": code, "req_id": req_id}
    if contract is not None:
        detail["contract"] = contract.localSymbol or contract.symbol or str(contract.conId)
    if code == CLIENT_ID_IN_USE:
        client = session.feed.client_id
        text = (
            f"clientId {client} is already in use at {session.feed.host}:{session.feed.port} "
            f"(IB 326: {message}); another session holds it, often the previous one "
            "right after a Gateway restart"
        )
        session.listener.feed_event("error", text, status="error", detail=detail)
        session.lost(text, GatewayError(text))
    elif code == SOCKET_PORT_RESET:
        session.lost(f"IB {code}: {message}")
    elif code == CONNECTIVITY_LOST:
        session.data_lost = True
        session.listener.feed_data_lost(code, message)
    elif code == RESTORED_DATA_LOST:
        session.data_lost = False
        session.needs_resubscribe = True
        session.listener.feed_data_restored(code, message, resubscribe=True)
    elif code == RESTORED_DATA_KEPT:
        session.data_lost = False
        session.listener.feed_data_restored(code, message, resubscribe=False)
    elif code in FARM_BROKEN or code in FARM_OK:
        if code == MARKET_FARM_BROKEN:
            session.broken_farms.add(farm_name(message))
        elif code in MARKET_FARM_OK:
            session.broken_farms.discard(farm_name(message))
        status: Status = "warning" if code in FARM_BROKEN else "info"
        session.listener.feed_event("farm", f"IB {code}: {message}", status=status, detail=detail)
    elif code == NO_SUCH_TICKER and req_id in session.cancelled:
        log.debug("IB 300 for cancelled reqId %d: already gone", req_id)
    else:
        # 2100-2199 are IB's warnings ("farm connecting", "account data unsubscribed").
        status = "warning" if 2100 <= code < 2200 else "error"
        session.listener.feed_event("error", f"IB {code}: {message}", status=status, detail=detail)
