"""IB's side of the SOCKET feed: frame limit, settings protocol, records, small helpers."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeVar

from ib_async import Contract, ContractDetails, Ticker

from ibkr_bridge.core.greeks import clean_price, multiplier_from

T = TypeVar("T")

MODE: Final = "SOCKET"

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


# What reqMktData needs of a position's contract, besides the exchange.
_MARKET_FIELDS: Final = (
    "secType",
    "conId",
    "symbol",
    "lastTradeDateOrContractMonth",
    "strike",
    "right",
    "multiplier",
    "currency",
    "localSymbol",
    "tradingClass",
)


def _market_contract(contract: Contract, exchange: str) -> Contract:
    """A plain copy of a position's contract with ``exchange`` set, for reqMktData."""
    # A plain Contract, not Option/Stock: their constructors take other arguments.
    copied = {name: getattr(contract, name) for name in _MARKET_FIELDS}
    return Contract(**copied, exchange=exchange)


def _unique(
    query: Contract, details: Sequence[ContractDetails], under: dict[int, int] | None = None
) -> Contract | None:
    """The one contract ``details`` name, picked as ib_async's qualifyContracts does; else None.

    ``under`` (if given) learns each futures option's ``underConId`` (0: IB named none), the
    one future whose price is that option's underlying price.
    """
    found = [d.contract for d in details if d.contract is not None]
    if under is not None:
        under.update(
            {c.conId: d.underConId for d in details if (c := d.contract) and c.secType == "FOP"}
        )
    if len(found) > 1 and query.secType:
        # IB may answer a futures-option query with the future as well.
        found = [c for c in found if c.secType == query.secType]
    return found[0] if len(found) == 1 else None


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


# Contract multipliers are a handful of strings ("", "100", "50"): parse each once, not
# once per leg per tick.
_multiplier = functools.lru_cache(maxsize=1024)(multiplier_from)
