"""The drain's decoder: buffer lines straight to COPY tuples, with msgspec typed records.

A canonical Greeks line (what :func:`~ibkr_bridge.storage.buffer.format_line` writes) is
decoded by one msgspec call into a typed :class:`_GreeksLine`, which checks every type and
the exact field set in C, and becomes the tuple
:meth:`~ibkr_bridge.storage.store.Store.write_tuples` COPYs. Whatever msgspec does not
accept as canonical (an ``api_logs`` event, an older record shape, a string where a number
belongs, a NaN) goes through the reference parser
(:func:`~ibkr_bridge.storage.buffer._format._parse_raw_line`, the stdlib path) and
:func:`~ibkr_bridge.storage.store.split_raw`, so both accept, refuse and convert exactly the
same lines: the fast path only ever takes lines on which the reference agrees.

msgspec is stricter than the stdlib everywhere but in three places, each guarded here:
surrounding whitespace (the reference refuses it: the line must start with ``{``),
timestamps (msgspec would accept lowercase ``t``/``z`` and round digits past the
microsecond, so the timestamp is decoded as a string and parsed by
``datetime.fromisoformat``, as the live path does) and integers given for Greeks (taken as
floats, exactly as the live converter does).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec

from ibkr_bridge.core.greeks import PORTFOLIO
from ibkr_bridge.core.records import PositionRow, record_from_dict
from ibkr_bridge.storage.buffer._format import _CRC_OPEN, _CRC_TAIL, _parse_raw_line
from ibkr_bridge.storage.positions import position_tuple
from ibkr_bridge.storage.store import (
    GREEKS_COPY_COLUMNS,
    EventTuple,
    GreeksTuple,
    PositionTuple,
    RoutedGreeks,
    split_raw,
)

_OPEN_BRACE: Final = ord("{")
_CLOSE_BRACE: Final = ord("}")
_CRC_AT: Final = -_CRC_TAIL + len(_CRC_OPEN)  # where the 8 hex digits start
_TAIL: Final = _CRC_OPEN + b'%08x"}'  # how format_line ends a line


class _GreeksData(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A Greeks line's ``data``: every field required, none unknown (else: reference path).

    Declared in COPY column order (checked below against the store's columns).
    """

    timestamp: str  # parsed by datetime.fromisoformat, as the live path does
    contract: str
    delta: float | None
    gamma: float | None
    vega: float | None
    theta: float | None
    underlying_price: float | None
    dollar_delta: float | None
    account: str
    api_mode: str
    legs: int
    legs_missing: int
    legs_model: int  # required: a line from before it existed takes the reference path


class _GreeksLine(msgspec.Struct, gc=False):
    """A Greeks line; other top-level members (the checksum) are ignored, as the reference
    parser ignores them."""

    v: Literal[1]
    type: Literal["greeks"]
    key: Annotated[str, msgspec.Meta(min_length=1)]
    data: _GreeksData


if _GreeksData.__struct_fields__ != GREEKS_COPY_COLUMNS[1:-1]:  # pragma: no cover
    raise ImportError("the drain's Greeks struct no longer matches the COPY columns")

_decode: Final = msgspec.json.Decoder(_GreeksLine).decode
_DecodeFailed: Final = (msgspec.DecodeError, msgspec.ValidationError)


class CopyDecoder:
    """Decodes the lines of one batch into Greeks rows routed by table, and event tuples.

    ``tables`` gets each Greeks row in its table's COPY column order, without ``seq``
    (what the direct COPY sends, untouched); ``events`` the seq-first event tuples.
    Not thread-safe; one per batch, fed slice by slice with :meth:`decode`.
    """

    __slots__ = ("checksummed", "events", "greeks", "positions")
    __slots__ = ("checksummed", "events", "positions", "tables")

    def __init__(self, checksummed: bool) -> None:
        self.checksummed = checksummed
        self.tables = RoutedGreeks()
        self.events: list[EventTuple] = []
        self.positions: list[PositionTuple] = []

    @property
    def greeks(self) -> list[GreeksTuple]:
        """The Greeks rows as seq-first tuples in seq order, as ``split_raw`` makes them."""
        return list(self.tables)

    def decode(self, lines: Sequence[bytes], lo: int, hi: int) -> list[tuple[int, Exception]]:
        """Decode ``lines[lo:hi]`` (``seq`` = index); returns (index, why) of the bad ones."""
        bad: list[tuple[int, Exception]] = []
        t = self.tables
        portfolio, portfolio_seq = t.portfolio.append, t.portfolio_seq.append
        underlying, underlying_seq = t.underlying.append, t.underlying_seq.append
        parse_ts = datetime.fromisoformat
        legacy = not self.checksummed  # version-1 lines may come without a checksum
        crc32 = zlib.crc32
        for i in range(lo, hi):
            line = lines[i]
            # The line must end in the checksum of the rest (one comparison against the
            # tail format_line would have written; the CRC of the body, closing brace
            # last, without copying the body), or be a version-1 line without one.
            # It must start with "{": the reference refuses the whitespace msgspec skips.
            if (
                line.endswith(_TAIL % crc32(b"}", crc32(line[:-_CRC_TAIL])))
                or (legacy and line[-1:] == b"}" and line[-_CRC_TAIL:_CRC_AT] != _CRC_OPEN)
            ) and line[:1] == b"{":
                try:
                    rec = _decode(line)
                    d = rec.data
                    stamp = parse_ts(d.timestamp)
                except (*_DecodeFailed, ValueError):
                    stamp = None
                if stamp is not None and stamp.tzinfo is not None:
                    row = (
                        stamp,
                        d.contract,
                        d.delta,
                        d.gamma,
                        d.vega,
                        d.theta,
                        d.underlying_price,
                        d.dollar_delta,
                        d.account,
                        d.api_mode,
                        d.legs,
                        d.legs_missing,
                        d.legs_model,
                        rec.key,
                    )
                    # Routed as by_table does, by the contract alone.
                    if d.contract == PORTFOLIO:
                        portfolio(row)
                        portfolio_seq(i)
                    else:
                        underlying(row)
                        underlying_seq(i)
                    continue
            # Not canonical: the reference decides, with its own error for a bad line.
            why = self._slow(i, line)
            if why is not None:
                bad.append((i, why))
        return bad

    def _slow(self, seq: int, line: bytes) -> Exception | None:
        """The reference path: the stdlib parser, the live validators, ``split_raw``."""
        try:
            obj = _parse_raw_line(line, self.checksummed)
            if obj["type"] == "position":  # per-position rows: rare enough for the records
                record = record_from_dict(obj)
                assert isinstance(record, PositionRow)
                self.positions.append((seq, *position_tuple(record)))
                return None
            greeks, events = split_raw([obj])
        except Exception as exc:  # any failure to parse a line is that line's fault
            return exc
        for g in greeks:
            self.tables.add(seq, g[1:])
        self.events.extend((seq, *e[1:]) for e in events)
        return None


def reject_text(line: bytes, checksummed: bool) -> str:
    """The JSON handed to ``reject`` for a refused line: the parsed record, as before."""
    obj: dict[str, Any] = _parse_raw_line(line, checksummed)
    return json.dumps(obj, separators=(",", ":"))
