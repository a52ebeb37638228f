"""Records as the tuples COPY sends: the column lists, and the conversions from records and
from raw buffer lines.

The first element of every tuple is ``seq``, the record's position in its batch: the
temp-table path inserts in that order; the direct COPY drops it. The drain decodes its
Greeks straight into :class:`RoutedGreeks` instead: per table, in COPY column order
without ``seq``, so the direct COPY sends its lists as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from heapq import merge
from operator import attrgetter, itemgetter
from typing import Any, Final, overload

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
    "legs_model",
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
                    d["legs_model"],
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


class RoutedGreeks(Sequence[GreeksTuple]):
    """Greeks rows already routed as :func:`by_table` would, each list without ``seq``.

    ``portfolio``/``underlying`` hold the COPY tuples of each table in line order and
    ``portfolio_seq``/``underlying_seq`` their seqs; the direct COPY takes the lists as they
    are (no per-row re-slicing). As a sequence it is the seq-first tuples in seq order,
    built on demand, for the replay and one-by-one paths, which are rare.
    """

    __slots__ = ("_merged", "portfolio", "portfolio_seq", "underlying", "underlying_seq")

    def __init__(self) -> None:
        self.portfolio: list[GreeksTuple] = []
        self.portfolio_seq: list[int] = []
        self.underlying: list[GreeksTuple] = []
        self.underlying_seq: list[int] = []
        self._merged: list[GreeksTuple] = []

    def add(self, seq: int, row: GreeksTuple) -> None:
        """One row without its seq; seqs must come in increasing order."""
        if row[1] == PORTFOLIO:
            self.portfolio.append(row)
            self.portfolio_seq.append(seq)
        else:
            self.underlying.append(row)
            self.underlying_seq.append(seq)

    def tables(self) -> dict[str, list[GreeksTuple]]:
        """What :func:`by_table` returns for these rows: ``{table: rows without seq}``."""
        tables = {GREEKS_TABLE: self.portfolio, UNDERLYING_TABLE: self.underlying}
        return {table: rows for table, rows in tables.items() if rows}

    def _seq_first(self) -> list[GreeksTuple]:
        # Rows are only ever added, so a cache as long as the rows is up to date.
        if len(self._merged) != len(self):
            self._merged = list(
                merge(
                    *(
                        [(seq, *row) for seq, row in zip(seqs, rows, strict=True)]
                        for seqs, rows in (
                            (self.portfolio_seq, self.portfolio),
                            (self.underlying_seq, self.underlying),
                        )
                    ),
                    key=itemgetter(0),
                )
            )
        return self._merged

    def __len__(self) -> int:
        return len(self.portfolio) + len(self.underlying)

    @overload
    def __getitem__(self, index: int) -> GreeksTuple: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[GreeksTuple]: ...
    def __getitem__(self, index: int | slice) -> GreeksTuple | Sequence[GreeksTuple]:
        return self._seq_first()[index]

    def __iter__(self) -> Iterator[GreeksTuple]:
        return iter(self._seq_first())


def by_table(greeks: Sequence[GreeksTuple]) -> dict[str, list[GreeksTuple]]:
    """PORTFOLIO rows to portfolio_greeks, per-underlying rows to underlying_greeks (no seq)."""
    if isinstance(greeks, RoutedGreeks):
        return greeks.tables()
    tables: dict[str, list[GreeksTuple]] = {}
    for g in greeks:
        table = GREEKS_TABLE if g[2] == PORTFOLIO else UNDERLYING_TABLE
        tables.setdefault(table, []).append(g[1:])
    return tables
