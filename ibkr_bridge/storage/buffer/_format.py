"""The buffer's on-disk format: errors, batches, checksummed lines and their parsing."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
from attrs import frozen

from ibkr_bridge.core.errors import (
    BufferFormatError as BufferFormatError,
)
from ibkr_bridge.core.errors import (
    BufferFullError as BufferFullError,
)
from ibkr_bridge.core.errors import (
    BufferLockedError as BufferLockedError,
)
from ibkr_bridge.core.errors import (
    BufferPathError as BufferPathError,
)
from ibkr_bridge.core.errors import (
    JsonlBufferError as JsonlBufferError,
)
from ibkr_bridge.core.records import (
    SCHEMA_VERSION,
    ApiEvent,
    GreeksRow,
    PositionRow,
    Record,
    RecordFormatError,
    check_json_types,
    record_from_dict,
    record_to_dict,
    record_to_json,
)

log = logging.getLogger(__name__)


HEADER_VERSION: Final = 2
# Version 1 files (before per-line checksums) are read; their lines carry no checksum.
_READABLE_HEADERS: Final = frozenset({1, HEADER_VERSION})
# A line ends in `,"crc":"<8 hex>"}`: fixed width, so it is checked on the bytes, unparsed.
_CRC_OPEN: Final = b',"crc":"'
_CRC_TAIL: Final = len(_CRC_OPEN) + 8 + 2
# What opening a path of the wrong shape or permissions fails with: a person has to fix the
# setting or the file, so restarting cannot help.
_PATH_ERRNOS: Final = frozenset(
    {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.EROFS}
)
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700


# The data fields of each record type's line as this version writes them.
_FIELDS: Final[dict[Any, frozenset[str]]] = {
    cls.type: frozenset(a.name for a in attrs.fields(cls) if a.name != "key")
    for cls in (GreeksRow, ApiEvent, PositionRow)
}
_QUARANTINE_FLUSH: Final = 1000

T = TypeVar("T")


@frozen
class Batch:
    """Records read from ``start`` up to ``end`` (byte offset after the last consumed line).

    ``quarantined`` counts the lines in that range that were skipped as unreadable.
    """

    records: list[Record]
    start: int
    end: int
    quarantined: int
    file_id: str | None = None


@frozen
class RawBatch:
    """Like :class:`Batch`, with the parsed JSON objects instead of records."""

    lines: list[dict[str, Any]]
    start: int
    end: int
    quarantined: int
    file_id: str | None = None


@frozen
class BufferStats:
    """What ``ibkr-bridge buffer status`` shows.

    ``records_pending`` counts pending lines (a line that will turn out unreadable counts
    until a read quarantines it). ``oldest``/``newest`` are the timestamps of the first and
    last pending lines, ``None`` when there are none or they do not parse.
    """

    path: Path
    file_id: str | None
    records_pending: int
    pending_bytes: int
    file_bytes: int
    oldest: datetime | None
    newest: datetime | None
    quarantined_lines: int


@frozen
class _Bad:
    offset: int
    raw: bytes
    kind: str  # "unreadable", "torn" or "headerless": part of the dedupe key
    error: str


def _digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


def _aware_timestamp(data: dict[str, Any]) -> datetime:
    stamp = datetime.fromisoformat(data["timestamp"])
    if stamp.tzinfo is None:
        raise RecordFormatError("timestamp has no timezone")
    return stamp


_raw_decode: Final = json.JSONDecoder().raw_decode


def _loads_object(line: bytes) -> dict[str, Any]:
    """``json.loads`` for one buffer line, minus its encoding sniffing (a third faster)."""
    text = line.decode()
    obj, end = _raw_decode(text)
    if end != len(text):
        raise RecordFormatError(f"extra data after the JSON object at column {end}")
    if not isinstance(obj, dict):
        raise RecordFormatError("a buffer line must be a JSON object")
    return obj


def format_line(record: Record) -> bytes:
    """One buffer line (without its newline): the record's JSON with its checksum last.

    The checksum is the CRC-32 of :func:`~ibkr_bridge.core.records.record_to_json`'s bytes, so
    any change to them (one flipped digit still parses) is found before the line is used.
    """
    body = record_to_json(record).encode()
    return b'%s%s%08x"}' % (body[:-1], _CRC_OPEN, zlib.crc32(body))


def _verified(line: bytes, checksummed: bool) -> bytes:
    """The record JSON of a line, its checksum checked and removed; raises RecordFormatError.

    ``checksummed`` is true for files written with checksums (header version 2), where a line
    without one is damaged; in older files a line may lack it, and one that has it is checked.
    """
    if len(line) > _CRC_TAIL and line[-_CRC_TAIL : -_CRC_TAIL + len(_CRC_OPEN)] == _CRC_OPEN:
        body = line[:-_CRC_TAIL] + b"}"
        if line[-10:-2] != b"%08x" % zlib.crc32(body) or line[-2:] != b'"}':
            raise RecordFormatError("checksum mismatch: the line was damaged on disk")
        return body
    if checksummed:
        raise RecordFormatError("no checksum: the line was damaged on disk")
    return line


def _parse_line(line: bytes, checksummed: bool = True) -> Record:
    """One buffer line as a record (full validation); raises ValueError (RecordFormatError)."""
    return record_from_dict(_loads_object(_verified(line, checksummed)))


# Per record type, the live record's own converters and validators, field by field (attrs
# runs exactly these when a live row is built). The drain applies them to each line without
# building the record: a third of the cost. They look at the value only, never the instance.
_Check = tuple[str, Callable[[Any], Any] | None, Callable[[Any, Any, Any], Any] | None, Any]
_CHECKS: Final[dict[Any, tuple[_Check, ...]]] = {
    cls.type: tuple(
        (a.name, a.converter, a.validator, a)
        for a in attrs.fields(cls)
        if a.name != "key" and (a.converter is not None or a.validator is not None)
    )
    for cls in (GreeksRow, ApiEvent, PositionRow)
}


def _parse_raw_line(line: bytes, checksummed: bool = True) -> dict[str, Any]:
    """The drain's form of a line: the parsed JSON, every value validated as live.

    Each value goes through the converter and validator its record field has (finite
    Greeks, aware timestamp, known status): what a live row passes before it is written.
    The parsed object is returned as it is when no converter changed a value; otherwise it
    is re-encoded from the record, as :meth:`JsonlBuffer.read_batch` would return it.
    Raises ValueError (RecordFormatError).
    """
    obj = _loads_object(_verified(line, checksummed))
    if obj.get("v") != SCHEMA_VERSION:
        raise RecordFormatError(f"unknown record schema version {obj.get('v')!r}")
    kind = obj.get("type")
    fields = _FIELDS.get(kind)
    if fields is None:
        raise RecordFormatError(f"unknown record type {kind!r}")
    key = obj.get("key")
    if not isinstance(key, str) or not key:
        raise RecordFormatError("record key must be a non-empty string")
    data = obj.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("timestamp"), str):
        raise RecordFormatError("record data must be an object with a timestamp")
    if data.keys() != fields:
        # Another version's line (a field added or dropped since): the full path validates
        # it and fills defaults, so the drain sees exactly what read_batch would.
        return record_to_dict(record_from_dict(obj))
    check_json_types(str(kind), data)  # as record_from_dict does: a NaN account is the line's fault
    converted = False
    try:
        for name, convert, validate, attribute in _CHECKS[kind]:
            given = data[name]
            # As record_from_dict does before building the record.
            value = datetime.fromisoformat(given) if name == "timestamp" else given
            if convert is not None:
                value = convert(value)
                converted = converted or value is not given
            if validate is not None:
                validate(None, attribute, value)
    except (TypeError, ValueError) as exc:
        raise RecordFormatError(f"bad {kind} record: {exc}") from None
    if converted:
        return record_to_dict(record_from_dict(obj))
    return obj


def _line_timestamp(line: bytes) -> datetime | None:
    try:
        obj = json.loads(line)
        return _aware_timestamp(obj["data"])
    except (ValueError, KeyError, TypeError):
        return None
