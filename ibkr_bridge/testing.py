"""Helpers for testing ibkr-bridge and apps built on it (public API, used by our own tests).

- :class:`FakeClock`: move time by hand instead of sleeping.
- :class:`TcpProxy`: sit between a client and PostgreSQL (or a gateway) on loopback and
  misbehave on command: refuse connections, cut every open connection (also in the middle
  of a query), or black-hole traffic (accept and never answer). This is how database
  outages are produced without touching the shared server.
- :func:`find_postgres` / :class:`TestDatabase`: a real PostgreSQL for tests: the server
  named by ``IBKR_BRIDGE_TEST_DSN`` or ``DATABASE_URL``, else 127.0.0.1:5432, else an
  embedded one started with the ``pgserver`` package; each test gets its own schema.
- :class:`ScriptedFeed`: a feed that connects, fails and drops when told, for testing code
  around a :class:`~ibkr_bridge.Bridge` without a simulator
  (``Bridge(settings, feed=ScriptedFeed())``).
- :func:`expected_net_greeks`: the net Greeks of a simulator portfolio recomputed by hand
  with Black-Scholes, independently of the bridge's own aggregation.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import attrs

from ibkr_bridge.core.clock import FakeClock, SystemClock
from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.feeds.protocol import FeedListener

if TYPE_CHECKING:
    from ibkr_bridge.sim.portfolio import Portfolio

__all__ = [
    "FakeClock",
    "ProxyMode",
    "ScriptedFeed",
    "SystemClock",
    "TcpProxy",
    "TestDatabase",
    "expected_net_greeks",
    "find_postgres",
    "wait_until",
]


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


def _with_query(dsn: str, **params: str) -> str:
    parts = urlsplit(dsn)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit(parts._replace(query=query))


def _with_hostport(dsn: str, host: str, port: int) -> str:
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + f"{host}:{port}"
    # A socket directory given as ?host=... would override the netloc: drop it.
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("host="))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


_embedded: Any = None
_embedded_dir: str | None = None


async def _reachable(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close()
    return True


async def find_postgres() -> str:
    """A DSN of a running PostgreSQL for tests, starting an embedded one if needed."""
    global _embedded, _embedded_dir
    candidates = [
        os.environ.get("IBKR_BRIDGE_TEST_DSN"),
        os.environ.get("DATABASE_URL"),
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://postgres@127.0.0.1:5432/postgres",
    ]
    for dsn in candidates:
        if dsn and await _reachable(dsn):
            return dsn
    if _embedded is None:
        from pgserver import get_server  # type: ignore[attr-defined]  # the `embedded` extra

        _embedded_dir = tempfile.mkdtemp(prefix="ibkr-bridge-pg-")
        _embedded = await asyncio.to_thread(get_server, _embedded_dir, cleanup_mode="delete")
    uri: str = _embedded.get_uri()
    return uri


def stop_embedded_postgres() -> None:
    """Stop the embedded server started by :func:`find_postgres`, if any."""
    global _embedded, _embedded_dir
    if _embedded is not None:
        with contextlib.suppress(Exception):
            _embedded.cleanup()
        _embedded = None
    if _embedded_dir is not None:
        shutil.rmtree(_embedded_dir, ignore_errors=True)
        _embedded_dir = None


class TestDatabase:
    """A private schema on a real server; its DSN puts the schema first in search_path.

    The bridge's tables are created there, so tests never see each other's rows and never
    touch anything else on the shared server. ``proxied_dsn(proxy)`` is the same database
    reached through a :class:`TcpProxy`.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, server_dsn: str, schema: str | None = None) -> None:
        self.server_dsn = server_dsn
        self.schema = schema or f"bridge_test_{uuid.uuid4().hex[:12]}"
        self.dsn = _with_query(server_dsn, search_path=self.schema)

    @classmethod
    @contextlib.asynccontextmanager
    async def create(cls, server_dsn: str | None = None) -> AsyncIterator[TestDatabase]:
        db = cls(server_dsn or await find_postgres())
        conn = await asyncpg.connect(db.server_dsn)
        try:
            await conn.execute(f'CREATE SCHEMA "{db.schema}"')
        finally:
            await conn.close()
        try:
            yield db
        finally:
            conn = await asyncpg.connect(db.server_dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE')
            finally:
                await conn.close()

    def server_address(self) -> tuple[str, int]:
        """(host, port) of the server, for a TcpProxy (a host starting with / is a socket dir)."""
        parts = urlsplit(self.server_dsn)
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        host = parts.hostname or query.get("host") or "127.0.0.1"
        return host, parts.port or int(query.get("port", "5432"))

    def proxied_dsn(self, proxy: TcpProxy) -> str:
        return _with_hostport(self.dsn, proxy.host, proxy.port)

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await self.connect()
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()


async def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
) -> None:
    """Poll ``condition`` until it holds; raise TimeoutError (with no timing claim) if not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {condition}")
        await asyncio.sleep(interval)


def _one_portfolio_row(now: datetime, n: int) -> list[GreeksRow]:
    return [GreeksRow(timestamp=now, account="DU1", api_mode="SOCKET", delta=float(n))]


@attrs.define
class ScriptedFeed:
    """A :class:`~ibkr_bridge.feeds.protocol.Feed` that does what the test says.

    ``connect()`` fails with ``ConnectionRefusedError`` for each message left in
    ``fail_next``, else succeeds; ``drop()`` reports a lost connection; ``ready=False``
    makes ``snapshot()`` return None (no trustworthy state yet). ``rows(now, n)`` makes the
    n-th snapshot's rows (default: one PORTFOLIO row whose delta is n).
    """

    mode: str = "SOCKET"
    fail_next: list[str] = attrs.field(factory=list)
    rows: Callable[[datetime, int], list[GreeksRow]] = _one_portfolio_row
    connects: int = 0
    snapshots: int = 0
    listener: FeedListener | None = None
    connected: bool = False
    ready: bool = True

    @property
    def account(self) -> str | None:
        return "DU1"

    def set_listener(self, listener: FeedListener) -> None:
        self.listener = listener

    async def connect(self) -> None:
        self.connects += 1
        if self.fail_next:
            raise ConnectionRefusedError(self.fail_next.pop(0))
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False

    async def probe(self) -> None:
        return None

    async def resubscribe(self) -> None:
        return None

    def snapshot(self, now: datetime) -> list[GreeksRow] | None:
        if not (self.connected and self.ready):
            return None
        self.snapshots += 1
        return self.rows(now, self.snapshots)

    def drop(self, reason: str = "socket closed") -> None:
        """The connection is lost (as a Gateway restart would do)."""
        self.connected = False
        if self.listener is not None:
            self.listener.feed_disconnected(reason)


def expected_net_greeks(
    portfolio: Portfolio, account: str, at: datetime, symbol: str | None = None
) -> dict[str, float]:
    """Net delta/gamma/vega/theta of ``account`` at ``at``, recomputed by hand.

    Sum of position x multiplier x per-share Black-Scholes Greek over option legs, plus
    shares (stock) and quantity x multiplier (futures) for delta; only legs of the
    underlying ``symbol`` when given. Uses nothing of the bridge's aggregation.
    """
    from ibkr_bridge.sim.portfolio import black_scholes, years_between

    net = {"delta": 0.0, "gamma": 0.0, "vega": 0.0, "theta": 0.0}
    for pos in portfolio.positions(account):
        inst = pos.instrument
        if symbol is not None and inst.symbol != symbol:
            continue
        if not inst.is_option:
            net["delta"] += pos.quantity * (inst.multiplier if inst.sec_type == "FUT" else 1.0)
            continue
        expires = inst.expires_at()
        if inst.strike is None or inst.right is None or expires is None:
            raise ValueError(f"option {inst.conid} lacks strike, right or expiry")
        underlying = inst.underlying_conid if inst.underlying_conid is not None else inst.conid
        g = black_scholes(
            portfolio.spot(underlying),
            inst.strike,
            years_between(at, expires),
            portfolio.volatility(inst.conid),
            portfolio.rate,
            inst.right,
        )
        size = pos.quantity * inst.multiplier
        net["delta"] += size * g.delta
        net["gamma"] += size * g.gamma
        net["vega"] += size * g.vega
        net["theta"] += size * g.theta
    return net
