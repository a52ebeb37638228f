"""The bridge's tables as data: their names, columns and indexes, and the DDL made from them.

A column's entry says its type, how a new table declares it and what the bridge writes
into it; :data:`ACCEPTED_TYPES` lists the existing types that store those values exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from attrs import frozen

SCHEMA_LOCK_ID: Final = 0x1BB2_B41D

GREEKS_TABLE: Final = "portfolio_greeks"
UNDERLYING_TABLE: Final = "underlying_greeks"
EVENTS_TABLE: Final = "api_logs"
TABLES: Final = (GREEKS_TABLE, UNDERLYING_TABLE, EVENTS_TABLE)


@frozen
class Column:
    """One column the bridge writes: its type, and how a new table declares it."""

    type: str
    not_null: bool = False  # in a table the bridge creates
    default: str | None = None
    check: str | None = None
    writes_null: bool = False  # the bridge writes NULL here: a NOT NULL would refuse rows

    def ddl(self) -> str:
        parts = [self.type]
        if self.not_null:
            parts.append("NOT NULL")
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        if self.check is not None:
            parts.append(self.check)
        return " ".join(parts)

    def added(self) -> str:
        """As added to a table with rows: NOT NULL only where a default fills the old rows."""
        if self.default is None:
            return self.type
        return f"{self.type}{' NOT NULL' if self.not_null else ''} DEFAULT {self.default}"


# Columns the bridge fills the same way in several places (attrs values are frozen).
_STAMP: Final = Column("timestamptz", not_null=True)
_KEY: Final = Column("text", not_null=True)  # bridge_key
_NOT_NULL_TEXT: Final = Column("text", not_null=True)
_MAYBE_TEXT: Final = Column("text", writes_null=True)
_MEASURE: Final = Column("double precision", writes_null=True)  # NULL when unknown

# One line per column, in COPY order; a new nullable column is one more line here (and
# one in store/_rows.py).
GREEKS_COLUMNS: Final[Mapping[str, Column]] = {
    "timestamp": _STAMP,
    "contract": Column("text", not_null=True, default="'PORTFOLIO'"),
    **dict.fromkeys(
        ("delta", "gamma", "vega", "theta", "underlying_price", "dollar_delta"), _MEASURE
    ),
    "account": Column("text"),
    "api_mode": Column("text"),
    "legs": Column("integer"),
    "legs_missing": Column("integer"),
    "legs_model": Column("integer"),  # NULL in rows written before it existed
    "bridge_key": _KEY,
}
EVENTS_COLUMNS: Final[Mapping[str, Column]] = {
    "timestamp": _STAMP,
    "api_mode": _NOT_NULL_TEXT,
    "event": _NOT_NULL_TEXT,
    "status": Column("text", not_null=True, check="CHECK (status IN ('info', 'warning', 'error'))"),
    "message": _NOT_NULL_TEXT,
    **dict.fromkeys(("machine", "source_state", "dest_state"), _MAYBE_TEXT),
    "detail": Column("jsonb", not_null=True, default="'{}'::jsonb"),
    "bridge_key": _KEY,
}

# The same columns; a per-underlying row always names its underlying (no default).
UNDERLYING_COLUMNS: Final[Mapping[str, Column]] = {
    **GREEKS_COLUMNS,
    "contract": Column("text", not_null=True),
}

REQUIRED: Final[Mapping[str, Mapping[str, Column]]] = {
    GREEKS_TABLE: GREEKS_COLUMNS,
    UNDERLYING_TABLE: UNDERLYING_COLUMNS,
    EVENTS_TABLE: EVENTS_COLUMNS,
}

# bridge type -> format_type() spellings that store every value the bridge writes exactly
ACCEPTED_TYPES: Final[Mapping[str, frozenset[str]]] = {
    "timestamptz": frozenset({"timestamp with time zone"}),
    "double precision": frozenset({"double precision", "numeric"}),
    "text": frozenset({"text", "character varying"}),
    "integer": frozenset({"integer", "bigint"}),
    "jsonb": frozenset({"jsonb", "json"}),
}

# Extra indexes for readers: the latest rows by time, and per underlying.
_INDEXES: Final[Mapping[str, Sequence[str]]] = {
    GREEKS_TABLE: ("timestamp",),
    UNDERLYING_TABLE: ("timestamp", "contract, timestamp"),
    EVENTS_TABLE: ("timestamp",),
}


def unique_key_ddl(table: str) -> str:
    return f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_bridge_key_uq ON {table} (bridge_key);"


def table_ddl(table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` and the indexes of one bridge table."""
    columns = REQUIRED[table]
    width = max(len(name) for name in [*columns, "inserted_at"]) + 1
    body = [f"    {'id':<{width}}bigserial PRIMARY KEY"]
    body += [f"    {name:<{width}}{column.ddl()}" for name, column in columns.items()]
    body.append(f"    {'inserted_at':<{width}}timestamptz NOT NULL DEFAULT now()")
    lines = [f"CREATE TABLE IF NOT EXISTS {table} (", ",\n".join(body), ");", unique_key_ddl(table)]
    for cols in _INDEXES[table]:
        name = "_".join(c.strip() for c in cols.split(","))
        lines.append(f"CREATE INDEX IF NOT EXISTS {table}_{name}_idx ON {table} ({cols});")
    return "\n".join(lines)


DDL: Final = "\n\n".join(table_ddl(table) for table in TABLES)
