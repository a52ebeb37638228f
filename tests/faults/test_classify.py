"""Fault-matrix rows for issue 10: a failure is judged by what it means, not where it happens.

Each row is an operator's mistake on the database side that is *not* bad data: a role
without INSERT, a database that does not exist, a table whose constraint refuses every
record. In each the records must wait (breaker OPEN, buffer growing, nothing or at most a
handful in ``.rejected``), the log must stay short, and after the cause is fixed every
acknowledged row must be in PostgreSQL exactly once (the harness's common invariants).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ibkr_bridge.storage.schema import ensure_bridge_schema
from ibkr_bridge.storage.sink import MAX_CONSECUTIVE_REJECTIONS, REJECTION_EVENTS
from ibkr_bridge.testing import TestDatabase

from .harness import Case, World, assert_report, run_case
from .test_matrix import AuthRole, admin, breaker_errors, opened, until_opened

# An episode says what happened in a few lines, plus the breaker's own three per failed
# probe (OPEN -> HALF_OPEN -> probe -> OPEN); a loop would say it thousands of times.
EPISODE_LINES = 4
LINES_PER_PROBE = 3


class LogCount(logging.Handler):
    """Counts the bridge's log lines at INFO and above."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def counting_logs() -> Iterator[LogCount]:
    handler = LogCount()
    logger = logging.getLogger("ibkr_bridge")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def rejected_lines(w: World) -> int:
    path = Path(f"{w.buffer_path}.rejected")
    return len(path.read_text().splitlines()) if path.exists() else 0


def rejection_events(w: World) -> list[str]:
    return [e.event for e in w.events if e.event in REJECTION_EVENTS]


def assert_waiting(w: World, *, rejected: int = 0) -> None:
    sink = w.live_bridge.sink
    assert w.live_bridge.status.breaker == "OPEN", w.live_bridge.status.breaker
    assert not sink.buffer.is_empty, "nothing waits in the buffer"
    assert rejected_lines(w) == rejected, f"{rejected_lines(w)} lines in .rejected"
    assert sink.stats.rejected == rejected


PROBES = 3


async def probes(w: World, n: int = PROBES) -> None:
    """Let ``n`` more probes fail (BRIDGE_RETRY_INTERVAL is 10 s), ticking meanwhile."""
    before = opened(w)
    for i in range(n):
        await w.ticks(2)
        await until_opened(w, before + i + 1)


def assert_few_lines(logs: LogCount, w: World) -> None:
    """A constant per episode plus the breaker's own lines for each probe that failed."""
    assert len(logs.lines) <= EPISODE_LINES + LINES_PER_PROBE * opened(w), logs.lines


def note(case: str, text: str) -> None:
    """The figures of the run, for docs/reliability.md (shown with ``pytest -s``)."""
    print(f"\nFIGURES {case}: {text}")


# -- (a) a role without INSERT -----------------------------------------------------------------


async def no_insert_setup(w: World) -> None:
    conn = await w.db.connect()  # the tables exist, made by their owner
    try:
        await ensure_bridge_schema(conn)
    finally:
        await conn.close()
    role = AuthRole()
    w.scratch["role"] = role
    schema = f'"{w.db.schema}"'
    await admin(
        w,
        f"CREATE ROLE {role.name} LOGIN PASSWORD '{role.password}'",
        # Least privilege: no CREATE on the schema, not the tables' owner.
        f"GRANT USAGE ON SCHEMA {schema} TO {role.name}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role.name}",
    )

    async def drop() -> None:
        await admin(
            w,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role.name}'",
            f"DROP OWNED BY {role.name}",
            f"DROP ROLE {role.name}",
        )

    w.cleanups.append(drop)
    parts = urlsplit(w.env["DATABASE_URL"])
    netloc = f"{role.name}:{role.password}@{parts.hostname}:{parts.port}"
    w.env["DATABASE_URL"] = urlunsplit(parts._replace(netloc=netloc))


async def insert_not_granted(w: World) -> None:
    role: AuthRole = w.scratch["role"]
    await w.data_ready()
    with counting_logs() as logs:
        await w.ticks(4)
        await until_opened(w)
        await probes(w)
        # Before: every row went to .rejected as if it were bad data.
        assert_waiting(w)
        assert any("permission denied" in e for e in breaker_errors(w)), breaker_errors(w)
        assert_few_lines(logs, w)
    note("role-without-insert", f"{len(logs.lines)} log lines, {opened(w)} openings, 0 rejected")
    schema = f'"{w.db.schema}"'
    await admin(
        w,
        f"GRANT INSERT ON ALL TABLES IN SCHEMA {schema} TO {role.name}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role.name}",
    )


# -- (b) a database that does not exist --------------------------------------------------------


async def missing_database_setup(w: World) -> None:
    name = f"bridge_fault_{uuid.uuid4().hex[:12]}"
    w.scratch["database"] = name
    parts = urlsplit(w.env["DATABASE_URL"])
    w.env["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))

    original = w.db.server_dsn  # the scenario points w.db at the new database later

    async def drop() -> None:
        conn = await asyncpg.connect(original)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    w.cleanups.append(drop)


async def database_missing(w: World) -> None:
    name: str = w.scratch["database"]
    await w.data_ready()
    with counting_logs() as logs:
        await w.ticks(4)
        await until_opened(w)
        await probes(w)
        # Before: SQLSTATE 3D000 counted as bad data: every row went to .rejected.
        assert_waiting(w)
        assert any("does not exist" in e for e in breaker_errors(w)), breaker_errors(w)
        assert_few_lines(logs, w)
    note("database-missing", f"{len(logs.lines)} log lines, {opened(w)} openings, 0 rejected")
    # The operator creates the database; the invariants then read it (same private schema).
    await admin(w, f'CREATE DATABASE "{name}"')
    server = urlunsplit(urlsplit(w.db.server_dsn)._replace(path=f"/{name}"))
    created = TestDatabase(server, schema=w.db.schema)
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE SCHEMA "{w.db.schema}"')
    finally:
        await conn.close()
    w.db = created


# -- (c) a table refusing every record ----------------------------------------------------------

_REFUSE = "ALTER TABLE {table} ADD CONSTRAINT refuse_everything CHECK (false) NOT VALID"


async def everything_refused(w: World) -> None:
    await w.data_ready()
    await w.ticks(1)
    await w.live_bridge.sink.flush()
    tables = [f'"{w.db.schema}".{t}' for t in ("portfolio_greeks", "underlying_greeks", "api_logs")]
    await admin(w, *(_REFUSE.format(table=t) for t in tables))
    with counting_logs() as logs:
        await w.ticks(6)
        await until_opened(w)
        await probes(w)
        # Before: each rejection emitted an event, itself rejected, emitting another: a loop
        # (issue 10: ~19,000 .rejected lines in 8 s). Now a handful, then the rows wait.
        assert_waiting(w, rejected=MAX_CONSECUTIVE_REJECTIONS)
        assert rejection_events(w) == ["rejected"], rejection_events(w)
        assert_few_lines(logs, w)
    note(
        "table-refuses-everything",
        f"{rejected_lines(w)} .rejected lines, {len(rejection_events(w))} rejection event, "
        f"{len(logs.lines)} log lines",
    )
    await admin(w, *(f"ALTER TABLE {t} DROP CONSTRAINT refuse_everything" for t in tables))


async def episode_reported(w: World) -> None:
    assert rejection_events(w) == ["rejected", "rejections_ended"], rejection_events(w)
    rows = await w.db.fetch("SELECT detail FROM api_logs WHERE event = 'rejections_ended'")
    detail = json.loads(rows[0]["detail"])
    assert detail["requeued"] == MAX_CONSECUTIVE_REJECTIONS, detail
    assert rejected_lines(w) == MAX_CONSECUTIVE_REJECTIONS


CASES = [
    Case(
        "db-role-without-insert",
        insert_not_granted,
        setup=no_insert_setup,
        note="42501: records wait, no line in .rejected; after GRANT every row once",
    ),
    Case(
        "db-database-missing",
        database_missing,
        setup=missing_database_setup,
        note="3D000: records wait, no line in .rejected; after CREATE DATABASE every row once",
    ),
    Case(
        "db-table-refuses-everything",
        everything_refused,
        verify=episode_reported,
        note=(
            f"CHECK (false): {MAX_CONSECUTIVE_REJECTIONS} lines in .rejected, then the records "
            "wait; one episode; the rejected rows queued again"
        ),
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
async def test_classified_fault(case: Case, db: TestDatabase, tmp_path: Path) -> None:
    assert_report(await run_case(case, db, tmp_path))
