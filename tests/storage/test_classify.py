"""classify_db_error: a record is rejected only when its own data is wrong.

Unit cases use asyncpg's real exception classes (built the way asyncpg builds them from a
server message); the database cases provoke each failure on the real server.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import attrs
import pytest
from asyncpg import exceptions as pgexc

from ibkr_bridge.core.errors import PermanentStoreError, TransientStoreError
from ibkr_bridge.core.records import ApiEvent
from ibkr_bridge.storage.dberrors import Failure, classify_db_error, is_replay
from ibkr_bridge.storage.store import Store
from ibkr_bridge.testing import TestDatabase
from tests.storage.store.test_store import T0, row


def server_error(sqlstate: str, **fields: str) -> asyncpg.PostgresError:
    """The exception asyncpg raises for a server ErrorResponse with this SQLSTATE."""
    names = {"constraint_name": "n", "detail": "D", "table_name": "t"}
    message = {"C": sqlstate, "M": f"error {sqlstate}"}
    message.update({names[k]: v for k, v in fields.items()})
    exc = pgexc.PostgresError.new(message)
    assert isinstance(exc, asyncpg.PostgresError)
    return exc


# -- by SQLSTATE, with the classes asyncpg maps them to --------------------------------------

DATA = {
    "22000": pgexc.DataError,
    "22001": pgexc.StringDataRightTruncationError,
    "22003": pgexc.NumericValueOutOfRangeError,
    "22021": pgexc.CharacterNotInRepertoireError,
    "22P02": pgexc.InvalidTextRepresentationError,
    "22P05": pgexc.UntranslatableCharacterError,
    "23502": pgexc.NotNullViolationError,
    "23503": pgexc.ForeignKeyViolationError,
    "23514": pgexc.CheckViolationError,
    "23P01": pgexc.ExclusionViolationError,
}
ENVIRONMENT = {
    "08006": pgexc.ConnectionFailureError,
    "28000": pgexc.InvalidAuthorizationSpecificationError,
    "28P01": pgexc.InvalidPasswordError,
    "3D000": pgexc.InvalidCatalogNameError,
    "42P01": pgexc.UndefinedTableError,
    "42703": pgexc.UndefinedColumnError,
    "42501": pgexc.InsufficientPrivilegeError,
    "25006": pgexc.ReadOnlySQLTransactionError,
    "53100": pgexc.DiskFullError,
    "53300": pgexc.TooManyConnectionsError,
    "57P01": pgexc.AdminShutdownError,
    "57014": pgexc.QueryCanceledError,
    "40001": pgexc.SerializationError,
    "40P01": pgexc.DeadlockDetectedError,
    "42601": pgexc.PostgresSyntaxError,  # our SQL and the server disagree: not the row
    "XX000": pgexc.InternalServerError,
}


@pytest.mark.parametrize(("sqlstate", "kind"), sorted(DATA.items()))
def test_data_exceptions_and_constraints_reject_the_record(
    sqlstate: str, kind: type[asyncpg.PostgresError]
) -> None:
    exc = server_error(sqlstate)
    assert type(exc) is kind
    assert classify_db_error(exc) is Failure.PERMANENT


@pytest.mark.parametrize(("sqlstate", "kind"), sorted(ENVIRONMENT.items()))
def test_everything_about_the_environment_waits(
    sqlstate: str, kind: type[asyncpg.PostgresError]
) -> None:
    exc = server_error(sqlstate)
    assert type(exc) is kind
    assert classify_db_error(exc) is Failure.TRANSIENT


def test_a_unique_violation_on_the_idempotency_key_is_a_replay() -> None:
    replay = server_error(
        "23505",
        constraint_name="portfolio_greeks_bridge_key_uq",
        detail="Key (bridge_key)=(abc) already exists.",
    )
    assert isinstance(replay, pgexc.UniqueViolationError)
    assert is_replay(replay)
    assert classify_db_error(replay) is Failure.TRANSIENT  # retried as a no-op, never rejected
    other = server_error(
        "23505", constraint_name="greeks_slot_uq", detail="Key (contract)=(SPY) already exists."
    )
    assert not is_replay(other)
    assert classify_db_error(other) is Failure.PERMANENT


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        OSError(-2, "Name or service not known"),  # DNS
        TimeoutError("deadline"),
        ValueError("invalid literal for int() with base 10: 'notaport'"),  # a DSN asyncpg parses
        pgexc.ClientConfigurationError("`sslmode` parameter must be one of: ..."),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        pgexc.InternalClientError("unexpected"),
        RuntimeError("nobody foresaw this"),
        TypeError("must be real number, not str"),
    ],
    ids=repr,
)
def test_anything_else_is_the_environment(exc: BaseException) -> None:
    assert classify_db_error(exc) is Failure.TRANSIENT


@pytest.mark.parametrize(
    "exc",
    [OverflowError("value out of int32 range"), pgexc._base.DataError("invalid input for $1")],
    ids=repr,
)
def test_a_value_asyncpg_cannot_encode_is_the_records_data(exc: BaseException) -> None:
    assert classify_db_error(exc) is Failure.PERMANENT


def test_already_classified_errors_keep_their_kind() -> None:
    assert classify_db_error(TransientStoreError("x")) is Failure.TRANSIENT
    assert classify_db_error(PermanentStoreError("x")) is Failure.PERMANENT


# -- the same, provoked on the real server -----------------------------------------------------


async def admin(db: TestDatabase, *statements: str) -> None:
    conn = await asyncpg.connect(db.server_dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def schema_ready(db: TestDatabase) -> TestDatabase:
    s = await Store.open(db.dsn)
    try:
        await s.ensure_schema()
    finally:
        await s.close()
    return db


async def write_with(dsn: str, **kwargs: Any) -> None:
    s = await Store.open(dsn, connect_timeout=2.0, command_timeout=2.0, **kwargs)
    try:
        await s.write([row(0)])
    finally:
        await s.close()


def with_user(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def test_real_nul_byte_and_check_violation_are_permanent(schema_ready: TestDatabase) -> None:
    db = schema_ready
    s = await Store.open(db.dsn)
    try:
        with pytest.raises(PermanentStoreError, match="CharacterNotInRepertoire"):
            await s.write([ApiEvent(timestamp=T0, api_mode="SOCKET", event="e", message="\x00")])
        await admin(
            db,
            f'ALTER TABLE "{db.schema}".portfolio_greeks ADD CONSTRAINT no_rows CHECK (false)',
        )
        with pytest.raises(PermanentStoreError, match="CheckViolation"):
            await s.write([row(1)])
    finally:
        await s.close()


async def test_real_replay_is_a_noop_not_a_rejection(schema_ready: TestDatabase) -> None:
    db = schema_ready
    s = await Store.open(db.dsn)
    try:
        r = row(0)
        await s.write([r])
        await s.write([r, row(1)])  # r again: the idempotency key makes it a no-op
        await admin(
            db,
            f'CREATE UNIQUE INDEX slot_uq ON "{db.schema}".portfolio_greeks (contract, timestamp)',
        )
        # Another unique constraint is the record's own data: permanent, even with a replay.
        with pytest.raises(PermanentStoreError, match="UniqueViolation"):
            await s.write([r, attrs.evolve(r, key="same-slot-new-key")])
    finally:
        await s.close()
    got = await db.fetch("SELECT bridge_key FROM portfolio_greeks ORDER BY id")
    assert len(got) == 2


async def test_real_insufficient_privilege_is_transient(schema_ready: TestDatabase) -> None:
    db = schema_ready
    name, password = f"bridge_cls_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    await admin(
        db,
        f"CREATE ROLE {name} LOGIN PASSWORD '{password}'",
        f'GRANT USAGE ON SCHEMA "{db.schema}" TO {name}',
        f'GRANT SELECT ON ALL TABLES IN SCHEMA "{db.schema}" TO {name}',
    )
    try:
        with pytest.raises(TransientStoreError, match="InsufficientPrivilege"):
            await write_with(with_user(db.dsn, name, password))
    finally:
        await admin(
            db,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'",
            f"DROP OWNED BY {name}",
            f"DROP ROLE {name}",
        )


async def test_real_missing_database_is_transient(db: TestDatabase) -> None:
    missing = f"bridge_missing_{uuid.uuid4().hex[:10]}"
    with pytest.raises(TransientStoreError, match="InvalidCatalogName"):
        await write_with(with_database(db.dsn, missing))


async def test_real_missing_table_is_transient(db: TestDatabase) -> None:
    with pytest.raises(TransientStoreError, match="UndefinedTable"):
        await write_with(db.dsn)  # the private schema has no bridge tables yet


async def test_real_read_only_transaction_is_transient(schema_ready: TestDatabase) -> None:
    with pytest.raises(TransientStoreError, match="ReadOnlySQLTransaction"):
        await write_with(schema_ready.dsn, server_settings={"default_transaction_read_only": "on"})


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:notaport/postgres",
        "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=bogus",
        "postgresql://postgres@no-such-host.invalid:5432/postgres",
    ],
)
async def test_a_dsn_asyncpg_cannot_use_is_transient_not_bad_data(dsn: str) -> None:
    with pytest.raises(TransientStoreError):
        await write_with(dsn)


async def test_accepts_tries_without_writing(schema_ready: TestDatabase) -> None:
    db = schema_ready
    s = await Store.open(db.dsn)
    try:
        assert await s.accepts([row(0)])
        await admin(
            db,
            f'ALTER TABLE "{db.schema}".portfolio_greeks ADD CONSTRAINT no_rows CHECK (false)',
        )
        assert not await s.accepts([row(1)])
    finally:
        await s.close()
    assert await db.fetch("SELECT 1 FROM portfolio_greeks") == []
