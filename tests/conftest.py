"""Shared fixtures: a real PostgreSQL (local server, else embedded), a private schema per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings

from ibkr_bridge.testing import TestDatabase, find_postgres, stop_embedded_postgres

# Hypothesis' per-example deadline (200 ms) is a timed assertion: on a loaded 2-core CI
# machine a pure example took 400 ms and failed the suite. Speed lives in benchmarks/.
settings.register_profile("ibkr-bridge", deadline=None)
settings.load_profile("ibkr-bridge")


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    dsn = asyncio.run(find_postgres())
    yield dsn
    stop_embedded_postgres()


@pytest.fixture
async def db(pg_server_dsn: str) -> AsyncIterator[TestDatabase]:
    async with TestDatabase.create(pg_server_dsn) as database:
        yield database
