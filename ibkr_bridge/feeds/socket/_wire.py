"""IB's side of the SOCKET feed: message codes, frame limit, settings protocol, small helpers."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, TypeVar

from ib_async import Contract, Ticker

from ibkr_bridge.core.greeks import (
    clean_price,
    multiplier_from,
)
from ibkr_bridge.core.records import Status

log = logging.getLogger(__name__)


T = TypeVar("T")

MODE: Final = "SOCKET"

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
MARKET_DATA_TYPES: Final = (1, 2, 3, 4)

# Contracts whose exchange may be SMART when the position message leaves it empty;
# futures and futures options must name their real exchange, found by conId.
_SMART_SEC_TYPES: Final = frozenset({"STK", "OPT"})
# Contract-details lookups in flight at once (each also waits for a pacing token).
_DETAILS_IN_FLIGHT: Final = 4
_DETAILS: Final = "contract_details"  # the pacer's endpoint name


#: The largest frame the Gateway may announce. ib_async buffers a frame until all of its
#: declared length has arrived (and copies the buffer on every read), so a hostile or broken
#: Gateway announcing 2 GB would grow memory without bound; real IB messages are at most a
#: few hundred KiB.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024


class FrameLimit:
    """Follows the TWS API framing (4-byte big-endian length, then the body) of one
    connection's incoming bytes without keeping them, to find a frame announced larger
    than ``limit`` as soon as its length prefix arrives."""

    __slots__ = ("_header", "_remaining", "limit")

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        self.limit = limit
        self._header = b""  # a length prefix split across reads
        self._remaining = 0  # body bytes of the current frame still to come

    def oversized(self, data: bytes) -> int | None:
        """Take the next bytes read; the declared length of a frame over the limit in them,
        else None. After a non-None answer the stream is not followed any further."""
        pos, end = 0, len(data)
        while pos < end:
            if self._remaining:
                step = min(self._remaining, end - pos)
                self._remaining -= step
                pos += step
                continue
            need = 4 - len(self._header)
            self._header += data[pos : pos + need]
            pos += need
            if len(self._header) < 4:
                break
            size = int.from_bytes(self._header, "big")
            self._header = b""
            if size > self.limit:
                return size
            self._remaining = size
        return None


class _Lookup:
    """One contract-details request the book needs: what to ask, and where the answer goes."""

    __slots__ = ("query", "store", "what")

    def __init__(self, query: Contract, what: str, store: Callable[[Contract], None]) -> None:
        self.query = query
        self.what = what
        self.store = store


class SocketSettings(Protocol):
    """The settings :meth:`SocketFeed.from_settings` reads."""

    @property
    def socket_host(self) -> str: ...

    @property
    def socket_port(self) -> int: ...

    @property
    def client_id(self) -> int: ...

    @property
    def account(self) -> str | None: ...

    @property
    def market_data_type(self) -> int: ...

    @property
    def connect_timeout(self) -> float: ...


_FARM_NAME: Final = re.compile(r"(?::|upon demand\.)\s*(\S+)\s*$")


def farm_name(message: str) -> str:
    """The farm an IB 210x notice names: "...is broken:usfarm" and 2108's "...available
    upon demand.usfarm" both give "usfarm"."""
    match = _FARM_NAME.search(message)
    return match[1] if match else message.strip()


class _NullListener:
    """Listener used until :meth:`SocketFeed.set_listener` is called."""

    def feed_disconnected(self, reason: str) -> None:
        log.info("feed disconnected: %s", reason)

    def feed_data_lost(self, code: int, message: str) -> None:
        log.info("IB %d: %s", code, message)

    def feed_data_restored(self, code: int, message: str, *, resubscribe: bool) -> None:
        log.info("IB %d: %s", code, message)

    def feed_event(
        self,
        event: str,
        message: str,
        *,
        status: Status = "info",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        log.info("%s: %s", event, message)


def _market_contract(contract: Contract, exchange: str) -> Contract:
    """A plain copy of a position's contract with ``exchange`` set, for reqMktData."""
    # A plain Contract, not Option/Stock: their constructors take other arguments.
    return Contract(
        secType=contract.secType,
        conId=contract.conId,
        symbol=contract.symbol,
        lastTradeDateOrContractMonth=contract.lastTradeDateOrContractMonth,
        strike=contract.strike,
        right=contract.right,
        multiplier=contract.multiplier,
        exchange=exchange,
        currency=contract.currency,
        localSymbol=contract.localSymbol,
        tradingClass=contract.tradingClass,
    )


def _ticker_price(ticker: Ticker | None) -> float | None:
    """The traded price of an underlying: market price, else last, else previous close."""
    if ticker is None:
        return None
    for value in (ticker.marketPrice(), ticker.last, ticker.close):
        price = clean_price(value)
        if price is not None:
            return price
    return None


class _Subscription:
    """One reqMktData stream of a session, with when its latest Greeks arrived."""

    __slots__ = ("contract", "greeks", "greeks_at", "req_id", "subscribed_at", "ticker")

    def __init__(self, contract: Contract, ticker: Ticker, req_id: int, at: float) -> None:
        self.contract = contract
        self.ticker = ticker
        self.req_id = req_id
        self.subscribed_at = at  # the feed clock's monotonic time of reqMktData
        self.greeks: object = None  # the OptionComputation last seen on the ticker
        self.greeks_at: float | None = None  # monotonic time it was first seen


# How often a probe looks for Gateway traffic while its reqCurrentTime is pending.
_PROBE_POLL: Final = 0.02

# Contract multipliers are a handful of strings ("", "100", "50"): parse each once, not
# once per leg per tick.
_multiplier = functools.lru_cache(maxsize=1024)(multiplier_from)
