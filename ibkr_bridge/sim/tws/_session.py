"""API sessions of the TWS simulator: the listener, the handshake and the request loop.

Each accepted socket gets a :class:`~ibkr_bridge.sim.tws._state.Conn`; its handler reads
the ``API\\0`` prefix and version handshake, then frames of requests, recording each
before dispatching it (and waiting while the Gateway is frozen).
"""

from __future__ import annotations

import asyncio
import struct

from ibkr_bridge.sim.portfolio import NEW_YORK
from ibkr_bridge.sim.tws import _codec as wire
from ibkr_bridge.sim.tws import _messages as msg
from ibkr_bridge.sim.tws._requests import Requests
from ibkr_bridge.sim.tws._state import Conn, RequestRecord, log


class Sessions(Requests):
    """Listens on ``host:port`` and serves each API socket until it closes."""

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def _close_listener(self) -> None:
        if self._server is not None:
            # Closing the listening socket makes new connects fail with ECONNREFUSED while
            # established sockets stay up (Python 3.11 does not close them here).
            self._server.close()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn_seq += 1
        conn = Conn(self._conn_seq, writer)
        conn.task = asyncio.current_task()
        self._conns[conn.id] = conn
        self.connections_accepted += 1
        try:
            if await reader.readexactly(4) != wire.API_PREFIX:
                log.warning("connection %d: no API prefix, closing", conn.id)
                return
            body = await self._read_frame(reader)
            await self._wait_thawed()
            low, high = wire.parse_handshake(body)
            version = wire.negotiate(low, high, self.min_version, self.max_version)
            if version is None:
                log.warning("connection %d: client versions %d..%d unsupported", conn.id, low, high)
                return
            conn.version = version
            self._write(conn, msg.handshake_reply(version, self._connection_time()))
            while True:
                fields = wire.split_fields(await self._read_frame(reader))
                if not fields:
                    continue
                self._record(conn, fields)
                await self._wait_thawed()
                if conn.closing:
                    break
                self._dispatch(conn, fields)
        except (asyncio.IncompleteReadError, ConnectionError, wire.FrameError) as exc:
            log.debug("connection %d closed: %r", conn.id, exc)
        finally:
            self._conns.pop(conn.id, None)
            conn.close()

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        if size > wire.MAX_FRAME:
            raise wire.FrameError(f"frame of {size} bytes")
        return await reader.readexactly(size)

    def _record(self, conn: Conn, fields: list[str]) -> None:
        try:
            msg_id = int(fields[0])
        except ValueError:
            msg_id = -1
        self._requests.append(
            RequestRecord(conn.id, conn.client_id, msg_id, tuple(fields), self._clock.monotonic())
        )
        self._request_signal.set()

    def _connection_time(self) -> str:
        return self._clock.now().astimezone(NEW_YORK).strftime("%Y%m%d %H:%M:%S %Z")
