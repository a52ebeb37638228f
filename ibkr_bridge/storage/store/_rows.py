"""Records as the tuples COPY sends: the column lists, and the conversions from records and
from raw buffer lines.

The first element of every tuple is ``seq``, the record's position in its batch: the
temp-table path inserts in that order; the direct COPY drops it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any, Final

from ibkr_bridge.core.greeks import PORTFOLIO
from ibkr_bridge.core.records import ApiEvent, GreeksRow, PositionRow, Record
from ibkr_bridge.storage.positions import position_tuple
from ibkr_bridge.storage.schema import GREEKS_TABLE, UNDERLYING_TABLE

GREEKS_COPY_COLUMNS: Final = (
    "seq",
    "timestamp",
    "contract",
    "delta",
    "gamma",
    "vega",
    "theta",
    "underlying_price",
    "dollar_delta",
    "account",
    "api_mode",
    "legs",
    "legs_missing",
    "bridge_key",
)
EVENTS_COPY_COLUMNS: Final = (
    "seq",
    "timestamp",
    "api_mode",
    "event",
    "status",
    "message",
    "machine",
    "source_state",
    "dest_state",
    "detail",
    "bridge_key",
)

GreeksTuple = tuple[Any, ...]
EventTuple = tuple[Any, ...]
PositionTuple = tuple[Any, ...]  # (seq, *storage.positions.COPY_COLUMNS order)

# A record's attributes carry the columns' names, so the tuple follows the list above;
# only seq, the JSON detail and bridge_key (the record's key) are filled in by hand.
_GREEKS_VALUES: Final = attrgetter(*GREEKS_COPY_COLUMNS[1:-1])
_EVENT_VALUES: Final = attrgetter(*EVENTS_COPY_COLUMNS[1:-2])


def greeks_tuple(seq: int, row: GreeksRow) -> GreeksTuple:
    return (seq, *_GREEKS_VALUES(row), row.key)


def event_tuple(seq: int, event: ApiEvent) -> EventTuple:
    detail = json.dumps(dict(event.detail), separators=(",", ":"), default=str)
    return (seq, *_EVENT_VALUES(event), detail, event.key)


def split_records(
    records: Iterable[Record],
) -> tuple[list[GreeksTuple], list[EventTuple], list[PositionTuple]]:
    greeks: list[GreeksTuple] = []
    events: list[EventTuple] = []
    positions: list[PositionTuple] = []
    for seq, record in enumerate(records):
        if isinstance(record, GreeksRow):
            greeks.append(greeks_tuple(seq, record))
        elif isinstance(record, PositionRow):
            positions.append((seq, *position_tuple(record)))
        else:
            events.append(event_tuple(seq, record))
    return greeks, events, positions


def split_raw(lines: Iterable[Mapping[str, Any]]) -> tuple[list[GreeksTuple], list[EventTuple]]:
    """Tuples straight from buffer dicts (``{"type", "key", "data"}``), skipping attrs.

    The drain of a large buffer spends its time here, so it does the least work that
    still hands asyncpg typed values (binary COPY needs datetimes, not strings). The
    fields are spelled out: measured, that is faster than an ``itemgetter`` and unpacking.
    """
    greeks: list[GreeksTuple] = []
    events: list[EventTuple] = []
    parse_ts = datetime.fromisoformat
    for seq, line in enumerate(lines):
        d = line["data"]
        if line["type"] == "greeks":
            greeks.append(
                (
                    seq,
                    parse_ts(d["timestamp"]),
                    d["contract"],
                    d["delta"],
                    d["gamma"],
                    d["vega"],
                    d["theta"],
                    d["underlying_price"],
                    d["dollar_delta"],
                    d["account"],
                    d["api_mode"],
                    d["legs"],
                    d["legs_missing"],
                    line["key"],
                )
            )
        else:
            events.append(
                (
                    seq,
                    parse_ts(d["timestamp"]),
                    d["api_mode"],
                    d["event"],
                    d["status"],
                    d["message"],
                    d["machine"],
                    d["source_state"],
                    d["dest_state"],
                    json.dumps(d["detail"], separators=(",", ":")),
                    line["key"],
                )
            )
    return greeks, events


def by_table(greeks: Sequence[GreeksTuple]) -> dict[str, list[GreeksTuple]]:
    """PORTFOLIO rows to portfolio_greeks, per-underlying rows to underlying_greeks (no seq)."""
    tables: dict[str, list[GreeksTuple]] = {}
    for g in greeks:
        table = GREEKS_TABLE if g[2] == PORTFOLIO else UNDERLYING_TABLE
        tables.setdefault(table, []).append(g[1:])
    return tables
