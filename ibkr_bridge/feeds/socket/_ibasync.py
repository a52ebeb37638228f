"""The one place the SOCKET feed reaches into ib_async 2.1.0's internals, each reach with its why.

ib_async is pinned to 2.1.0 (``tests/feeds/socket/test_ibasync_adapter.py`` fails when that or any
reach below changes). Everything else in the feed uses ib_async's public API.

* ``IB.client._onSocketHasData`` in ``IB.client.conn.hasData`` (:func:`intercept_socket_data`):
  every byte the socket reads must pass the frame-size check before ib_async buffers it, since
  ib_async keeps a frame until all of its announced length has arrived (2 GiB from a hostile
  Gateway). The handler is swapped on this IB instance only, never on ib_async's classes.
* ``IB._onError`` in ``IB.errorEvent`` (:func:`replace_error_handler`): ib_async answers IB 1102
  with reqAccountSummary, a request this bridge has no use for on a Gateway it shares with the
  trader, so that handler is taken off this instance.
* ``IB.client._numMsgRecv`` (:func:`messages_received`): the probe counts any message arriving
  as a sign of life, because its reqCurrentTime may wait behind ib_async's own request
  throttle (45 a second) while a large book subscribes.
* ``IB.client._msgQ``, ``IB.client.conn.numMsgSent`` and ``IB.client.conn.sendMsg``
  (:func:`send_mark`, :func:`until_sent`): a request ib_async holds back in its throttle queue
  (45 a second) has not reached the Gateway yet, so a contract lookup's deadline starts once
  the messages queued before it are written; the write is wrapped on this instance only, to
  wake the lookups waiting for it.
* ``IB.wrapper.ticker2ReqId["mktData"]`` (:func:`market_data_req_id`): reqMktData returns the
  Ticker, not the reqId; the reqId tells IB's 300 "Can't find EId" for a stream the feed
  cancelled itself apart from a real error.
* ``IB.wrapper.reqId2Ticker`` (:func:`forget_req_id`): after cancelMktData ib_async keeps routing
  the old reqId to the (shared, per-conId) Ticker; late ticks of a cancelled stream must not
  land on the new one.
* ``IB.wrapper.positions`` (:func:`forget_positions`): after IB 1101 the positions are fetched
  again from empty, since a position closed during the outage would never be reported as 0.
* ``IB.client.disconnect()`` (:func:`close_socket`): ``IB.disconnect()`` does nothing while the
  handshake is still running, so a failed connect closes the client's socket directly.
"""

from __future__ import annotations

import asyncio
import heapq
import weakref
from collections.abc import Callable

from ib_async import IB, Contract, Ticker

#: The ib_async release every reach here was checked against.
PINNED_VERSION = "2.1.0"


def intercept_socket_data(ib: IB, check: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """Route the bytes ``ib``'s socket reads to ``check``; return ib_async's own handler.

    ``check`` must hand the bytes it accepts to the returned handler itself.
    """
    conn = ib.client.conn
    deliver: Callable[[bytes], None] = ib.client._onSocketHasData
    if deliver not in conn.hasData:
        # Another ib_async layout: wrapping blindly would hand every byte over twice.
        raise RuntimeError("ib_async's socket data handler is not where 2.1.0 has it")
    conn.hasData -= deliver
    conn.hasData += check
    return deliver


def replace_error_handler(
    ib: IB, handler: Callable[[int, int, str, Contract | None], None]
) -> None:
    """Let ``handler`` alone answer ``ib``'s errors (no reqAccountSummary after IB 1102)."""
    ib.errorEvent -= ib._onError
    ib.errorEvent += handler


def messages_received(ib: IB) -> int:
    """How many whole messages ``ib`` has read from the Gateway so far."""
    count: int = ib.client._numMsgRecv
    return count


def send_mark(ib: IB) -> int:
    """Call right after a request: ``ib``'s written-message count once that request is written.

    ib_async appends each request to its throttle queue and writes from the queue's front,
    so the request just made is written when every message queued before it has been.
    """
    client = ib.client
    written: int = client.conn.numMsgSent
    return written + len(client._msgQ)


def sent(ib: IB, mark: int) -> bool:
    """Whether the request whose :func:`send_mark` was ``mark`` has been written."""
    written: int = ib.client.conn.numMsgSent
    return written >= mark


class _SendWatch:
    """Wakes the waiters on ``ib``'s written-message count as ib_async writes each message."""

    def __init__(self, ib: IB) -> None:
        conn = ib.client.conn
        self._conn = conn
        self._write: Callable[[bytes], None] = conn.sendMsg
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # heap by mark
        self._serial = 0  # ties between equal marks: futures do not compare
        # On this instance only; ib_async's own write runs first, unchanged.
        conn.sendMsg = self._sent  # type: ignore[method-assign]  # an instance attribute

    def _sent(self, data: bytes) -> None:
        self._write(data)
        written: int = self._conn.numMsgSent
        while self._waiting and self._waiting[0][0] <= written:
            waiter = heapq.heappop(self._waiting)[2]
            if not waiter.done():
                waiter.set_result(None)

    def wait(self, mark: int) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._serial += 1
        heapq.heappush(self._waiting, (mark, self._serial, waiter))
        return waiter


_watches: weakref.WeakKeyDictionary[IB, _SendWatch] = weakref.WeakKeyDictionary()


async def until_sent(ib: IB, mark: int, slack: float) -> bool:
    """Wait until :func:`sent`; False if that takes longer than ib_async's throttle needs
    for the messages ahead (on the loop's time, as the throttle's), plus ``slack`` seconds."""
    if sent(ib, mark):
        return True
    client = ib.client
    ahead = mark - client.conn.numMsgSent
    rate: int = client.MaxRequests
    interval: float = client.RequestsInterval
    drain = (ahead // rate + 1) * interval if rate else 0.0
    watch = _watches.get(ib)
    if watch is None:
        watch = _watches[ib] = _SendWatch(ib)
    try:
        await asyncio.wait_for(watch.wait(mark), drain + slack)
    except TimeoutError:
        return False
    return True


def market_data_req_id(ib: IB, ticker: Ticker) -> int:
    """The reqId of ``ticker``'s reqMktData stream (0 if ib_async holds none)."""
    req_id: int = ib.wrapper.ticker2ReqId["mktData"].get(ticker, 0)
    return req_id


def forget_req_id(ib: IB, req_id: int) -> None:
    """Stop ib_async routing a cancelled stream's ticks (by ``req_id``) to its Ticker."""
    ib.wrapper.reqId2Ticker.pop(req_id, None)


def forget_positions(ib: IB) -> None:
    """Empty ib_async's position cache, so the next reqPositions rebuilds it from nothing."""
    ib.wrapper.positions.clear()


def close_socket(ib: IB) -> None:
    """Close ``ib``'s client socket, even in the middle of the handshake."""
    ib.client.disconnect()  # type: ignore[no-untyped-call]  # ib_async lacks hints
