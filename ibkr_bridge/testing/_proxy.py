"""A loopback TCP proxy that refuses, cuts or black-holes connections when a test says so."""

from __future__ import annotations

import asyncio
import contextlib
import enum


class ProxyMode(enum.Enum):
    PASS = "pass"  # forward bytes both ways
    REFUSE = "refuse"  # new connections are closed at once (the client sees a reset/EOF)
    BLACKHOLE = "blackhole"  # accept and read, never forward, never answer


class TcpProxy:
    """A loopback TCP proxy whose behaviour a test switches at any moment.

    ``down()`` (refuse new connections) plus ``cut()`` (close the open ones) is a server
    that went away; ``blackhole()`` is a network that swallows packets; ``up()`` restores.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.mode = ProxyMode.PASS
        self.connections_accepted = 0
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def up(self) -> None:
        self.mode = ProxyMode.PASS

    def down(self) -> None:
        """Refuse new connections and cut the open ones: the server is gone."""
        self.mode = ProxyMode.REFUSE
        self.cut()

    def refuse(self) -> None:
        """Refuse new connections; leave open ones alone."""
        self.mode = ProxyMode.REFUSE

    def blackhole(self) -> None:
        """Stop forwarding in both directions, on open and new connections alike."""
        self.mode = ProxyMode.BLACKHOLE

    def cut(self) -> None:
        """Abort every open connection (in the middle of whatever it was doing)."""
        for writer in list(self._writers):
            transport = writer.transport
            if transport is not None:
                transport.abort()
        self._writers.clear()

    @property
    def open_connections(self) -> int:
        return len(self._writers) // 2

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        if self.mode is ProxyMode.REFUSE:
            writer.transport.abort()
            return
        try:
            if self.target_host.startswith("/"):
                # A Unix-socket server (the embedded PostgreSQL): libpq's socket name.
                path = f"{self.target_host}/.s.PGSQL.{self.target_port}"
                up_reader, up_writer = await asyncio.open_unix_connection(path)
            else:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, (writer, up_writer)))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if self.mode is ProxyMode.BLACKHOLE:
                    continue  # swallowed: the peer waits forever
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in pair:
                self._writers.discard(w)
                if w.transport is not None and not w.transport.is_closing():
                    w.transport.abort()
