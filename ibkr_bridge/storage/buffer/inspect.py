"""Read-only inspection of a buffer file for ``buffer status`` and the doctor."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from attrs import frozen

from ibkr_bridge.storage.buffer._fileio import _CHUNK, _NOFOLLOW, _read_nofollow, _rfind_newline
from ibkr_bridge.storage.buffer._format import (
    _READABLE_HEADERS,
    HEADER_VERSION,
    BufferPathError,
    BufferStats,
    _line_timestamp,
)
from ibkr_bridge.storage.buffer._jsonl import JsonlBuffer

log = logging.getLogger(__name__)


# -- read-only inspection (no lock, no repair) ---------------------------------------------


@frozen
class BufferReport:
    """The buffer as found on disk, read without its lock.

    ``locked_by`` is the holder's pid as written in the lock file (``"unknown"`` if empty)
    or None when no process holds it. ``notes`` say what the next bridge start would
    repair. ``error`` is set when the files cannot be read as a buffer at all.
    """

    stats: BufferStats
    exists: bool
    locked_by: str | None
    quarantine_path: Path
    notes: tuple[str, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "path": str(s.path),
            "exists": self.exists,
            "locked": self.locked_by is not None,
            "locked_by_pid": self.locked_by,
            "file_id": s.file_id,
            "records_pending": s.records_pending,
            "pending_bytes": s.pending_bytes,
            "file_bytes": s.file_bytes,
            "oldest": s.oldest.isoformat() if s.oldest else None,
            "newest": s.newest.isoformat() if s.newest else None,
            "quarantined_lines": s.quarantined_lines,
            "quarantine_path": str(self.quarantine_path),
            "notes": list(self.notes),
            "error": self.error,
        }


def _lock_holder(lock_path: Path) -> str | None:
    try:
        fd = os.open(lock_path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _count_lines(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return 0
    try:
        count, pos, last = 0, 0, b"\n"
        while chunk := os.pread(fd, _CHUNK, pos):
            count += chunk.count(b"\n")
            pos += len(chunk)
            last = chunk[-1:]
        return count + (last != b"\n")  # a last entry without its newline still counts
    finally:
        os.close(fd)


def _count_newlines(fd: int, start: int, end: int) -> int:
    count, pos = 0, start
    while pos < end and (chunk := os.pread(fd, min(_CHUNK, end - pos), pos)):
        count += chunk.count(b"\n")
        pos += len(chunk)
    return count


def _header(fd: int) -> tuple[str, int] | None:
    """(file_id, end of the header line), None for a headerless file; ValueError if foreign."""
    head = os.pread(fd, 4096, 0)
    newline = head.find(b"\n")
    try:
        obj = json.loads(head[:newline]) if newline >= 0 else None
    except ValueError:
        obj = None
    if not isinstance(obj, dict) or obj.get("type") != "header":
        return None
    if obj.get("v") not in _READABLE_HEADERS:
        raise ValueError(
            f"header version {obj.get('v')!r}: written by an incompatible ibkr-bridge "
            f"(this one reads version {HEADER_VERSION})"
        )
    file_id = obj.get("file_id")
    return (file_id, newline + 1) if isinstance(file_id, str) and file_id else None


def _cursor(raw: bytes | None, file_id: str, start: int, end: int, fd: int) -> tuple[int, str]:
    """The committed offset the bridge would use, and why it falls back, if it does."""
    if raw is None:
        return start, ""
    try:
        obj = json.loads(raw)
        offset = obj["offset"]
        if obj["file_id"] != file_id:
            return start, "cursor belongs to another data file"
    except (ValueError, KeyError, TypeError):
        return start, "cursor unreadable"
    if not isinstance(offset, int) or isinstance(offset, bool) or not start <= offset <= end:
        return start, f"cursor offset {offset!r} outside the data"
    if offset > start and os.pread(fd, 1, offset - 1) != b"\n":
        return start, f"cursor offset {offset} is mid-line"
    return offset, ""


def inspect_buffer(path: Path) -> BufferReport:
    """Read the buffer's files as they are, without locking or repairing anything.

    For `ibkr-bridge check` and `buffer status`: safe while a bridge holds the buffer.
    """
    names = JsonlBuffer(path)  # touches nothing on disk: used for its file names only
    path = names.path
    try:
        names._check_shapes()  # a link or a directory is reported, never read through
    except BufferPathError as exc:
        nothing = BufferStats(path, None, 0, 0, 0, None, None, 0)
        exists = os.path.lexists(path)
        return BufferReport(nothing, exists, None, names.quarantine_path, error=str(exc))
    quarantined = _count_lines(names.quarantine_path)
    locked_by = _lock_holder(names.lock_path)
    empty = BufferStats(path, None, 0, 0, 0, None, None, quarantined)

    def report(stats: BufferStats, *notes: str, error: str | None = None) -> BufferReport:
        exists = path.exists()
        kept = tuple(n for n in notes if n)
        return BufferReport(stats, exists, locked_by, names.quarantine_path, kept, error)

    # The cursor is read before the data's size: a running bridge only moves it forward
    # and never past what it appended, so the pair read in this order is consistent.
    try:
        raw_cursor: bytes | None = _read_nofollow(names.cursor_path)
    except FileNotFoundError:
        raw_cursor = None
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return report(empty)
    try:
        size = os.fstat(fd).st_size
        try:
            header = _header(fd)
        except ValueError as exc:
            return report(empty, error=str(exc))
        if header is None:
            lines = _count_newlines(fd, 0, size)
            return report(
                empty,
                f"no ibkr-bridge header: the bridge will move its {lines} lines to "
                f"{names.quarantine_path.name} when it opens the buffer",
            )
        file_id, start = header
        # A line still being written has no newline yet; a crash leaves one torn.
        end = _rfind_newline(fd, start - 1, size) + 1
        torn = ""
        if end < size and locked_by is None:
            torn = f"torn last line ({size - end} bytes): the bridge will quarantine it"
        offset, why = _cursor(raw_cursor, file_id, start, end, fd)
        replay = f"{why}: the bridge will replay from the first record" if why else ""
        pending = _count_newlines(fd, offset, end)
        oldest = newest = None
        if pending:
            first_end = _first_newline(fd, offset, end)
            oldest = _line_timestamp(os.pread(fd, first_end - offset, offset))
            before_last = _rfind_newline(fd, offset, end - 1)
            last_start = before_last + 1 if before_last >= 0 else offset
            newest = _line_timestamp(os.pread(fd, end - 1 - last_start, last_start))
        stats = BufferStats(path, file_id, pending, end - offset, size, oldest, newest, quarantined)
        return report(stats, torn, replay if locked_by is None else "")
    except OSError as exc:
        return report(empty, error=f"{type(exc).__name__}: {exc}")
    finally:
        os.close(fd)


def _first_newline(fd: int, start: int, end: int) -> int:
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
        idx = chunk.find(b"\n")
        if idx >= 0:
            return pos + idx
        pos += len(chunk)
    return end
