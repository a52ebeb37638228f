"""Shared fixtures: a real PostgreSQL (local server, else embedded), a private schema per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from ibkr_bridge.testing import TestDatabase, find_postgres, stop_embedded_postgres


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    dsn = asyncio.run(find_postgres())
    yield dsn
    stop_embedded_postgres()


@pytest.fixture
async def db(pg_server_dsn: str) -> AsyncIterator[TestDatabase]:
    async with TestDatabase.create(pg_server_dsn) as database:
        yield database
