"""A futures option's underlying price: the stream of the one future IB names for it.

IB's model Greeks carry the future's price (undPrice), but not when IB computed nothing
(-2 Greeks and undPrice -1, as outside market hours). The model then needs the future's
own price. The future is the one IB names in the option's contract details
(``underConId``), and its price is found by that conId, never by symbol: ESZ6 and ESH7
are both "ES", and the wrong expiry's price would be worse than none. A future the book
also holds is the same conId, so the same one stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Protocol

from ib_async import Contract, Position

from ibkr_bridge.feeds.socket._wire import _market_contract, _Subscription, _ticker_price

if TYPE_CHECKING:
    from ibkr_bridge.feeds.socket._subscriptions import _Subscriptions


def fop_futures(
    subs: _Subscriptions, positions: Iterable[Position], wanted: MutableMapping[int, Contract]
) -> None:
    """Add to ``wanted`` the underlying future of each futures option in ``positions``.

    Until the option's details (for its ``underConId``) and then the future's (for its
    exchange) are known, each is queued for the paced lookup; the option meanwhile has no
    future's price, as before.
    """
    under_conids = subs.under_conids
    for pos in positions:
        fop = pos.contract
        if fop.secType != "FOP":
            continue
        under = under_conids.get(fop.conId)
        if under is None:
            _look_up_details(subs, fop)
            continue
        if not under or under in wanted:
            continue  # IB named no future, or its stream is wanted already (held, or shared)
        future = subs._contract_for(
            Contract(secType="FUT", conId=under, localSymbol=f"future of {fop.localSymbol}")
        )
        if future is not None:
            wanted[under] = future


def _look_up_details(subs: _Subscriptions, fop: Contract) -> None:
    """The option's contract details; the same lookup (and key) as for its exchange."""
    conid = fop.conId

    def store(found: Contract) -> None:
        subs.resolved[conid] = _market_contract(found, found.exchange)

    what = f"contract details of conId {conid} ({fop.localSymbol})"
    subs._look_up(("conid", conid), Contract(conId=conid), what, store)


class Streams(Protocol):
    """What :func:`future_price` reads: a session's streams and its FOPs' futures."""

    @property
    def subs(self) -> Mapping[int, _Subscription]: ...

    @property
    def under_conids(self) -> Mapping[int, int]: ...


def future_price(session: Streams, fop_conid: int) -> float | None:
    """The traded price of the future underlying the futures option ``fop_conid``, if streamed."""
    under = session.under_conids.get(fop_conid)
    sub = session.subs.get(under) if under else None
    return _ticker_price(sub.ticker if sub is not None else None)
