"""A real PostgreSQL for tests: find one (or start an embedded one) and a private schema."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg

from ibkr_bridge.testing._proxy import TcpProxy


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
