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
