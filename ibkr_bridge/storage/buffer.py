"""Crash-safe JSONL buffer: holds records on disk while PostgreSQL is unreachable.

Files, all mode 0600 next to ``path`` (a missing parent directory is created 0700):

``path``
    The data file: a header line ``{"v":2,"type":"header","file_id":"<uuid hex>"}``, then one
    record per line: :func:`ibkr_bridge.core.records.record_to_json` with a checksum field
    ``"crc":"<8 hex digits>"`` added last, the CRC-32 of the record's JSON without it (see
    :func:`format_line`). It is only ever appended to and, once fully drained, deleted; it
    is never rewritten or shifted in place. Files of header version 1 (written before the
    checksum) stay readable: their lines are taken without one.
``path.cursor``
    ``{"file_id": ..., "offset": n}``: the byte offset just after the last line whose records
    the database has committed. Replaced atomically (temp file, fsync, rename, fsync dir).
    Not written when the drain reaches the end (the files are deleted instead), and a
    failure to write it (disk full, I/O error) does not stop the drain: the cursor
    advances in memory and :attr:`JsonlBuffer.cursor_error` says why it is not saved.
    A restart then replays from the last saved cursor; the records' idempotency keys
    make that replay a no-op in the database, so nothing is written twice.
``path.quarantine``
    Lines that could not be read back (torn JSON, bad UTF-8, unknown schema), one JSON object
    per line: ``{"file_id", "offset", "kind", "error", "quarantined_at", "text" | "raw_b64"}``
    where ``kind`` is ``unreadable``, ``torn`` or ``headerless``. ``text`` is the original
    line when it is valid UTF-8, else ``raw_b64`` holds its exact bytes, so an operator can
    recover it. Nothing is ever dropped silently.
``path.lock``
    Held with an exclusive ``flock`` while the buffer is open (holds the owner's pid).

Draining follows the order disk-backed queues learned the hard way: commit to the database,
then advance an fsync'd cursor, then delete::

    batch = buf.read_batch(5000)   # from the cursor; nothing moves
    ...                            # COPY batch.records and COMMIT in PostgreSQL
    buf.commit(batch)              # cursor -> batch.end; at EOF the data file is deleted

A crash anywhere replays at most the uncommitted batch (at-least-once); the records'
idempotency keys make the replay a no-op in the database. Every batch whose ``end > start``
must be committed even when it holds no records (all its lines were quarantined).

:meth:`JsonlBuffer.read_raw_batch` is the drain's path, which COPYs tuples: it returns the
parsed JSON objects (``{"v", "type", "key", "data"}``, checksum removed) after the same
validation :meth:`JsonlBuffer.read_batch` runs (the records' own validators, as on the live
path), re-encoded from the record only where a converter would change a value. A line that
fails is quarantined and skipped.

Policies:

* Full: the buffer never deletes data to make room. An append that would grow the data file
  beyond ``max_bytes`` raises :class:`BufferFullError` and writes nothing; the caller logs it
  and keeps the records in memory or refuses new ones. A failed write or fsync is rolled back
  (truncated) so a batch is either wholly in the file or not at all.
* Quarantine exactly once: a bad line is quarantined (fsync'd) when a read reaches it, before
  its batch can be committed. A replay after a crash finds it again; entries are
  deduplicated by (file_id, offset, kind, content digest), so each bad line appears once.
  (The one thing this cannot tell apart: the same bytes torn at the same offset by two
  crashes in a row are recorded once; no byte is lost by that.)
* Torn tail: a last line without its newline is the remnant of an append that never
  returned (so never acknowledged). :meth:`JsonlBuffer.open` moves it to quarantine and
  truncates the file to the last newline. Complete lines written before the tear are kept.
* Headerless data file (e.g. from an older bridge): its lines are not trusted as records; all
  of them are moved to quarantine (``file_id`` null) and the file is removed, with a notice.
  A header of an unknown version raises :class:`BufferFormatError` and touches nothing.
* A cursor that is missing, corrupt, of another data file, beyond EOF or not on a line
  boundary means "start after the header" (a replay, deduplicated by key).
* Damaged line: a line whose checksum does not match its bytes (a flipped digit that still
  parses as JSON), or a line of a version-2 file without a checksum, is quarantined like an
  unreadable one; so is a line whose values the live path would refuse (a NaN or infinite
  Greek, a timestamp without zone): both reads validate every value with the records' own
  validators before anything reaches the database.
* Path shape: the buffer's files are opened with ``O_NOFOLLOW``. A buffer path (or one of
  its companion files) that is a symbolic link, a directory or another non-regular file, or
  that the process may not open, raises :class:`BufferPathError` and touches nothing:
  that is a configuration problem (``ibkr-bridge`` exits 2), not an outage.

Open-time findings (repairs, tightened permissions) are logged and kept in
:attr:`JsonlBuffer.notices`. Methods are synchronous and thread-safe; async callers use
``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import attrs
from attrs import frozen

from ibkr_bridge.core.errors import BridgeError
from ibkr_bridge.core.records import (
    SCHEMA_VERSION,
    ApiEvent,
    GreeksRow,
    Record,
    RecordFormatError,
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
# Open flags of every buffer file: a symlink planted at one of its names is never followed
# (it would have the target chmod'ed, read as data or overwritten).
_NOFOLLOW: Final = os.O_NOFOLLOW | os.O_CLOEXEC
# What opening a path of the wrong shape or permissions fails with: a person has to fix the
# setting or the file, so restarting cannot help.
_PATH_ERRNOS: Final = frozenset(
    {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.EROFS}
)
_CHUNK: Final = 1 << 18
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700


# The data fields of each record type's line as this version writes them.
_FIELDS: Final[dict[Any, frozenset[str]]] = {
    cls.type: frozenset(a.name for a in attrs.fields(cls) if a.name != "key")
    for cls in (GreeksRow, ApiEvent)
}
_QUARANTINE_FLUSH: Final = 1000

T = TypeVar("T")


class JsonlBufferError(BridgeError):
    """Base of the buffer's own errors."""


class BufferLockedError(JsonlBufferError):
    """Another process holds the buffer's lock."""


class BufferFullError(JsonlBufferError):
    """An append would exceed ``max_bytes``; nothing was written."""


class BufferFormatError(JsonlBufferError):
    """The data file was written by an incompatible version; it was left untouched."""


class BufferPathError(JsonlBufferError):
    """The buffer path cannot be used as given (a symlink, a directory, not permitted).

    A configuration problem: nothing was touched, and retrying cannot help.
    """


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_data(fd: int) -> None:
    # fdatasync also flushes the size change an append makes; atime/mtime can wait.
    os.fdatasync(fd)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_nofollow(path: Path) -> bytes:
    """The file's bytes; a symlink raises OSError (ELOOP) instead of being read through."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _iter_lines(fd: int, start: int, end: int) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, line without newline, complete) for each line in [start, end), streamed."""
    pos = start
    line_off = start
    rest = b""
    while pos < end:
        chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
        if not chunk:
            break
        pos += len(chunk)
        lines = (rest + chunk if rest else chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line_off, line, True
            line_off += len(line) + 1
    if rest:
        yield line_off, rest, False


def _rfind_newline(fd: int, floor: int, end: int) -> int:
    """Offset of the last newline in [floor, end), or -1."""
    hi = end
    while hi > floor:
        lo = max(floor, hi - _CHUNK)
        idx = os.pread(fd, hi - lo, lo).rfind(b"\n")
        if idx >= 0:
            return lo + idx
        hi = lo
    return -1


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
    for cls in (GreeksRow, ApiEvent)
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


class _Quarantine:
    """The append-only quarantine file and the set of entries it holds for one data file."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self._fsync = fsync
        self._file_id: str | None = None
        self._seen: set[tuple[int, str, bytes]] = set()

    def load(self, file_id: str | None) -> None:
        """Index the entries already quarantined for ``file_id``."""
        self._file_id = file_id
        self._seen = set()
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:
            return
        try:
            for _, line, _ in _iter_lines(fd, 0, os.fstat(fd).st_size):
                try:
                    entry = json.loads(line)
                    if entry["file_id"] != file_id:
                        continue
                    raw = (
                        entry["text"].encode()
                        if "text" in entry
                        else base64.b64decode(entry["raw_b64"], validate=True)
                    )
                    self._seen.add((int(entry["offset"]), entry["kind"], _digest(raw)))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a torn or foreign entry: nothing to dedupe against
        finally:
            os.close(fd)

    def reset(self, file_id: str | None) -> None:
        self._file_id = file_id
        self._seen = set()

    def add(self, bad: Iterable[_Bad]) -> int:
        """Append the entries not yet present (fsync'd); returns how many were written."""
        out: list[bytes] = []
        new: list[_Bad] = []
        keys: set[tuple[int, str, bytes]] = set()
        now = datetime.now(UTC).isoformat()
        for item in bad:
            seen_key = (item.offset, item.kind, _digest(item.raw))
            if seen_key in self._seen or seen_key in keys:
                continue
            keys.add(seen_key)
            new.append(item)
            entry: dict[str, Any] = {
                "file_id": self._file_id,
                "offset": item.offset,
                "kind": item.kind,
                "error": item.error,
                "quarantined_at": now,
            }
            try:
                entry["text"] = item.raw.decode("utf-8")
            except UnicodeDecodeError:
                entry["raw_b64"] = base64.b64encode(item.raw).decode("ascii")
            out.append(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        if not out:
            return 0
        log.warning(
            "quarantining %d buffer line(s) in %s (first: %s at offset %d: %s)",
            len(new),
            self.path,
            new[0].kind,
            new[0].offset,
            new[0].error,
        )
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW, _FILE_MODE)
        try:
            # After a torn entry (crash or failed write) the next one starts on its own line;
            # the torn one stays as text for the operator and, not being indexed, is redone.
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                out.insert(0, b"\n")
            _write_all(fd, b"".join(out))
            if self._fsync:
                _sync_data(fd)
        finally:
            os.close(fd)
        # Only now: an entry whose write failed must be retried on the next read.
        self._seen |= keys
        return len(keys)

    def count(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:
            return 0
        try:
            return sum(1 for _, line, _ in _iter_lines(fd, 0, os.fstat(fd).st_size) if line)
        finally:
            os.close(fd)


class JsonlBuffer:
    """The on-disk buffer; see the module docstring for files, protocol and policies."""

    def __init__(self, path: Path, *, max_bytes: int = 1 << 30, fsync: bool = True) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.path = Path(path).expanduser()
        self.cursor_path = self.path.with_name(self.path.name + ".cursor")
        self.quarantine_path = self.path.with_name(self.path.name + ".quarantine")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.max_bytes = max_bytes
        self._fsync = fsync
        self._tmp_data = self.path.with_name(self.path.name + ".new")
        self._tmp_cursor = self.path.with_name(self.path.name + ".cursor.tmp")
        self._quarantine = _Quarantine(self.quarantine_path, fsync=fsync)
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._file_id: str | None = None
        self._header_end = 0
        self._size = 0
        self._cursor = 0
        self._needs_repair = False
        self._notices: list[str] = []
        self._checksummed = True  # the open data file's lines must carry checksums
        self._cursor_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the buffer and recover from whatever a crash left; see :attr:`notices`."""
        with self._mutex:
            if self._lock_fd is not None:
                return
            self._notices = []
            try:
                self._check_shapes()
                if not self.path.parent.exists():
                    self.path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                self._lock_fd = self._acquire_lock()
                try:
                    self._recover()
                except BaseException:
                    self._close_fds()
                    raise
            except OSError as exc:
                if exc.errno not in _PATH_ERRNOS:
                    raise
                # Checked above, so this is a race or a permission: still the path's shape.
                where = exc.filename or self.path
                raise BufferPathError(
                    f"buffer {self.path}: cannot use {where}: {exc.strerror or exc}"
                    + (" (a symbolic link is never followed)" if exc.errno == errno.ELOOP else "")
                ) from exc

    def close(self) -> None:
        """Release the lock; safe to call twice."""
        with self._mutex:
            self._close_fds()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def notices(self) -> tuple[str, ...]:
        """What the last :meth:`open` repaired or changed, for the operator."""
        return tuple(self._notices)

    # -- writing -----------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> None:
        """Write the records durably (one write, then fsync), all or nothing.

        Raises :class:`BufferFullError` if the data file would exceed ``max_bytes``.
        """
        if not records:
            return
        payload = b"".join([format_line(r) + b"\n" for r in records])
        with self._mutex:
            self._check_open()
            if self._needs_repair:
                raise JsonlBufferError(
                    f"an earlier failed append could not be rolled back in {self.path}; "
                    "close and reopen the buffer to repair it"
                )
            header = b"" if self._fd is not None else self._header_line(uuid.uuid4().hex)
            if self._size + len(header) + len(payload) > self.max_bytes:
                raise BufferFullError(
                    f"buffer {self.path} is full: {self._size} bytes held, {len(records)} "
                    f"records need {len(header) + len(payload)} more, the cap is "
                    f"{self.max_bytes}; nothing was written"
                )
            if self._fd is None:
                self._create(header)
            assert self._fd is not None
            before = self._size
            try:
                _write_all(self._fd, payload)
                if self._fsync:
                    _sync_data(self._fd)
            except BaseException:
                self._roll_back(before)
                raise
            self._size = before + len(payload)

    # -- reading -----------------------------------------------------------------------------

    def read_batch(
        self,
        max_records: int,
        max_bytes: int | None = None,
        *,
        after: Batch | RawBatch | None = None,
    ) -> Batch:
        """Up to ``max_records`` lines from the cursor, as records (full validation).

        ``max_bytes`` bounds the bytes consumed, except that one line is always taken.
        Reading does not move the cursor: call :meth:`commit` once the database has them.
        ``after`` reads the lines that follow a batch not committed yet (a drain reads
        ahead while the previous batch is being written); if that batch's file is gone or
        the cursor has passed it, reading starts at the cursor as usual.
        """
        return Batch(*self._scan(max_records, max_bytes, _parse_line, after))

    def read_raw_batch(
        self,
        max_records: int,
        max_bytes: int | None = None,
        *,
        after: Batch | RawBatch | None = None,
    ) -> RawBatch:
        """Like :meth:`read_batch`, returning parsed JSON objects (the drain's fast path)."""
        return RawBatch(*self._scan(max_records, max_bytes, _parse_raw_line, after))

    def commit(self, batch: Batch | RawBatch) -> None:
        """Mark the batch as committed to the database: advance the cursor durably.

        When the cursor reaches the end, the data file and the cursor file are deleted.
        Committing a batch again (or one from a data file since drained) is a no-op.
        """
        with self._mutex:
            self._check_open()
            if batch.file_id is None or batch.file_id != self._file_id:
                return  # that file was fully committed and deleted, or the batch is empty
            if batch.end <= self._cursor:
                return
            if batch.start > self._cursor:
                raise ValueError(
                    f"batch starts at offset {batch.start} but the cursor is at "
                    f"{self._cursor}: committing it would skip uncommitted records"
                )
            if batch.end > self._size:
                raise ValueError(f"batch ends at {batch.end}, beyond the data ({self._size})")
            if batch.end == self._size:
                # Everything is committed: the files go, so there is no cursor to save
                # (which needs room a full disk does not have); deleting frees the space.
                self._cursor = batch.end
                self._compact()
                return
            try:
                self._write_cursor(batch.end)
            except OSError as exc:
                # The database holds the batch: going on from memory loses nothing, and
                # a restart replays from the saved cursor, which the keys make a no-op.
                self._cursor_failed(exc)
            else:
                if self._cursor_error is not None:
                    log.warning("buffer cursor %s is saved again", self.cursor_path)
                    self._cursor_error = None
            self._cursor = batch.end

    def _cursor_failed(self, exc: OSError) -> None:
        if self._cursor_error is None:  # once per episode, not once per batch
            log.error(
                "cannot save the buffer cursor %s (%s): draining on from memory; a restart "
                "would replay from the last saved position (a no-op in the database)",
                self.cursor_path,
                exc,
            )
        self._cursor_error = f"cannot save the cursor {self.cursor_path.name}: {exc}"
        with contextlib.suppress(OSError):
            self._tmp_cursor.unlink(missing_ok=True)  # give back what a partial write took

    # -- introspection -----------------------------------------------------------------------

    @property
    def cursor_error(self) -> str | None:
        """Why the last cursor save failed (the drain went on from memory), else None."""
        return self._cursor_error

    @property
    def pending_bytes(self) -> int:
        """Bytes of lines not yet committed."""
        with self._mutex:
            self._check_open()
            return self._size - self._cursor

    @property
    def is_empty(self) -> bool:
        return self.pending_bytes == 0

    def count_pending(self) -> int:
        """Lines not yet committed (streams the file)."""
        with self._mutex:
            self._check_open()
            if self._fd is None:
                return 0
            count = 0
            pos = self._cursor
            while pos < self._size:
                chunk = os.pread(self._fd, min(_CHUNK, self._size - pos), pos)
                if not chunk:
                    break
                count += chunk.count(b"\n")
                pos += len(chunk)
            return count

    def stats(self) -> BufferStats:
        with self._mutex:
            pending = self.count_pending()
            oldest = newest = None
            if self._fd is not None and pending:
                first = next(_iter_lines(self._fd, self._cursor, self._size))[1]
                # The last pending line starts after the newline that precedes its own.
                last_start = max(
                    _rfind_newline(self._fd, self._cursor, self._size - 1) + 1, self._cursor
                )
                last = os.pread(self._fd, self._size - 1 - last_start, last_start)
                oldest, newest = _line_timestamp(first), _line_timestamp(last)
            return BufferStats(
                path=self.path,
                file_id=self._file_id,
                records_pending=pending,
                pending_bytes=self._size - self._cursor,
                file_bytes=self._size,
                oldest=oldest,
                newest=newest,
                quarantined_lines=self._quarantine.count(),
            )

    # -- internals ---------------------------------------------------------------------------

    def _notice(self, message: str) -> None:
        log.warning("%s", message)
        self._notices.append(message)

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise RuntimeError(f"buffer {self.path} is not open")

    def _open_private(self, path: Path, flags: int) -> int:
        return os.open(path, flags | _NOFOLLOW, _FILE_MODE)

    def _acquire_lock(self) -> int:
        fd = self._open_private(self.lock_path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise BufferLockedError(
                f"another ibkr-bridge process is using {self.path} "
                f"(pid {holder} holds {self.lock_path}); stop it or choose another buffer path"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _close_fds(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _companions(self) -> tuple[Path, ...]:
        """Every file the buffer opens under its name (``.rejected`` is the drain's)."""
        rejected = self.path.with_name(self.path.name + ".rejected")
        return (self.path, self.cursor_path, self.quarantine_path, self.lock_path, rejected)

    def _check_shapes(self) -> None:
        """Refuse, touching nothing, a buffer whose files are not plain files of its own."""
        for path in self._companions():
            try:
                found = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(found.st_mode):
                raise BufferPathError(
                    f"{path} is a symbolic link; ibkr-bridge never follows a link for its "
                    "buffer files (it would chmod, read or overwrite the target): set "
                    "BRIDGE_BUFFER_PATH to the real location. Nothing was touched"
                )
            if not stat.S_ISREG(found.st_mode):
                kind = "a directory" if stat.S_ISDIR(found.st_mode) else "a special file"
                raise BufferPathError(
                    f"{path} is not a regular file ({kind}); BRIDGE_BUFFER_PATH must name a "
                    "file the bridge owns. Nothing was touched"
                )

    def _tighten_modes(self) -> None:
        for path in (self.path, self.cursor_path, self.quarantine_path, self.lock_path):
            try:
                # O_NOFOLLOW: a link swapped in since _check_shapes fails (ELOOP), unchanged.
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
            except FileNotFoundError:
                continue
            try:
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                if mode & 0o077:
                    os.fchmod(fd, _FILE_MODE)
                    self._notice(f"{path} was readable by others (mode {mode:o}); changed to 600")
            finally:
                os.close(fd)

    def _recover(self) -> None:
        for tmp in (self._tmp_data, self._tmp_cursor):
            tmp.unlink(missing_ok=True)
        self._tighten_modes()
        self._file_id = None
        self._size = self._cursor = self._header_end = 0
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | _NOFOLLOW)
        except FileNotFoundError:
            self.cursor_path.unlink(missing_ok=True)  # left by a crash during compaction
            return
        self._size = os.fstat(self._fd).st_size
        header = self._read_header()
        if header is None:
            if self._size:
                self._quarantine_headerless()
            self._compact()
            return
        self._file_id, self._header_end = header
        self._quarantine.load(self._file_id)
        self._repair_torn_tail()
        self._cursor = self._load_cursor()
        if self._cursor == self._size:
            self._compact()

    @staticmethod
    def _header_line(file_id: str) -> bytes:
        header = {"v": HEADER_VERSION, "type": "header", "file_id": file_id}
        return json.dumps(header, separators=(",", ":")).encode() + b"\n"

    def _read_header(self) -> tuple[str, int] | None:
        assert self._fd is not None
        head = os.pread(self._fd, 4096, 0)
        newline = head.find(b"\n")
        if newline < 0:
            return None
        try:
            obj = json.loads(head[:newline])
        except ValueError:
            return None
        if not isinstance(obj, dict) or obj.get("type") != "header":
            return None
        if obj.get("v") not in _READABLE_HEADERS:
            raise BufferFormatError(
                f"{self.path} has header version {obj.get('v')!r}, this ibkr-bridge reads "
                f"versions {', '.join(map(str, sorted(_READABLE_HEADERS)))}; left untouched"
            )
        file_id = obj.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            return None
        self._checksummed = obj["v"] >= 2
        return file_id, newline + 1

    def _quarantine_headerless(self) -> None:
        assert self._fd is not None
        self._quarantine.load(None)
        pending: list[_Bad] = []
        lines = 0
        for offset, line, _ in _iter_lines(self._fd, 0, self._size):
            pending.append(_Bad(offset, line, "headerless", "data file has no ibkr-bridge header"))
            lines += 1
            if len(pending) >= _QUARANTINE_FLUSH:
                self._quarantine.add(pending)
                pending = []
        self._quarantine.add(pending)
        self._notice(
            f"{self.path} had no ibkr-bridge header: moved its {lines} lines to "
            f"{self.quarantine_path} and removed it"
        )

    def _repair_torn_tail(self) -> None:
        assert self._fd is not None
        if self._size == self._header_end or os.pread(self._fd, 1, self._size - 1) == b"\n":
            return
        cut = _rfind_newline(self._fd, self._header_end - 1, self._size) + 1
        fragment = os.pread(self._fd, self._size - cut, cut)
        self._quarantine.add(
            [_Bad(cut, fragment, "torn", "last line torn by a crash during an append")]
        )
        os.ftruncate(self._fd, cut)
        if self._fsync:
            os.fsync(self._fd)
        self._notice(
            f"{self.path} ended in a torn line ({self._size - cut} bytes at offset {cut}): "
            f"moved it to {self.quarantine_path}"
        )
        self._size = cut

    def _load_cursor(self) -> int:
        assert self._fd is not None
        start = self._header_end
        try:
            raw = _read_nofollow(self.cursor_path)
        except FileNotFoundError:
            return start  # nothing committed yet
        replay = "replaying from the first record (the database dedupes by key)"
        try:
            obj = json.loads(raw)
            file_id, offset = obj["file_id"], obj["offset"]
        except (ValueError, KeyError, TypeError):
            self._notice(f"{self.cursor_path} is unreadable; {replay}")
            return start
        if file_id != self._file_id:
            self._notice(f"{self.cursor_path} belongs to another data file; {replay}")
            return start
        if not isinstance(offset, int) or isinstance(offset, bool):
            self._notice(f"{self.cursor_path} has offset {offset!r}; {replay}")
            return start
        if not start <= offset <= self._size:
            self._notice(
                f"{self.cursor_path} offset {offset} is outside the data "
                f"({start}..{self._size}); {replay}"
            )
            return start
        if os.pread(self._fd, 1, offset - 1) != b"\n":
            self._notice(f"{self.cursor_path} offset {offset} is mid-line; {replay}")
            return start
        return offset

    def _write_cursor(self, offset: int) -> None:
        body = json.dumps({"file_id": self._file_id, "offset": offset}, separators=(",", ":"))
        fd = self._open_private(self._tmp_cursor, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            _write_all(fd, body.encode())
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp_cursor, self.cursor_path)
        if self._fsync:
            _sync_dir(self.path.parent)

    def _create(self, header: bytes) -> None:
        # Written aside and renamed so the data file never exists without its header.
        fd = self._open_private(self._tmp_data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            _write_all(fd, header)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp_data, self.path)
        if self._fsync:
            _sync_dir(self.path.parent)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | _NOFOLLOW)
        file_id = json.loads(header)["file_id"]
        self._file_id = file_id
        self._checksummed = True
        self._header_end = self._size = self._cursor = len(header)
        self._quarantine.reset(file_id)

    def _roll_back(self, size: int) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, size)
            if self._fsync:
                os.fsync(self._fd)
        except OSError:
            log.exception("could not roll back a failed append to %s", self.path)
            self._needs_repair = True

    def _compact(self) -> None:
        """Everything is committed: delete the data file, then the cursor."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)
        if self._fsync:
            _sync_dir(self.path.parent)
        # A crash here leaves a cursor naming a file that no longer exists: harmless.
        self.cursor_path.unlink(missing_ok=True)
        self._cursor_error = None  # no cursor is needed any more
        self._file_id = None
        self._size = self._cursor = self._header_end = 0
        self._quarantine.reset(None)

    def _scan(
        self,
        max_lines: int,
        max_bytes: int | None,
        parse: Callable[[bytes, bool], T],
        after: Batch | RawBatch | None = None,
    ) -> tuple[list[T], int, int, int, str | None]:
        """(items, start, end, quarantined, file_id) of the lines read from the cursor."""
        if max_lines <= 0:
            raise ValueError(f"max_records must be positive, got {max_lines}")
        with self._mutex:
            self._check_open()
            start = end = self._cursor
            if (
                after is not None
                and after.file_id is not None
                and after.file_id == self._file_id
                and self._cursor <= after.end <= self._size
            ):
                start = end = after.end
            items: list[T] = []
            bad: list[_Bad] = []
            if self._fd is None:
                return items, start, end, 0, None
            for offset, line, complete in _iter_lines(self._fd, start, self._size):
                size = len(line) + 1
                if not complete or (
                    max_bytes is not None and end > start and end - start + size > max_bytes
                ):
                    break
                try:
                    items.append(parse(line, self._checksummed))
                except Exception as exc:  # any failure to parse a line is that line's fault
                    bad.append(_Bad(offset, line, "unreadable", f"{type(exc).__name__}: {exc}"))
                end = offset + size
                if len(items) + len(bad) >= max_lines:
                    break
            # Durable before the caller can commit past these lines.
            self._quarantine.add(bad)
            return items, start, end, len(bad), self._file_id


def _line_timestamp(line: bytes) -> datetime | None:
    try:
        obj = json.loads(line)
        return _aware_timestamp(obj["data"])
    except (ValueError, KeyError, TypeError):
        return None


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
