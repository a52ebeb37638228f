"""The crash-safe JSONL buffer itself: append, read, commit the cursor, lock, stats."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from ibkr_bridge.core.records import (
    Record,
)
from ibkr_bridge.storage.buffer._fileio import (
    _CHUNK,
    _NOFOLLOW,
    _iter_lines,
    _read_nofollow,
    _rfind_newline,
    _sync_data,
    _sync_dir,
    _write_all,
)
from ibkr_bridge.storage.buffer._format import (
    _DIR_MODE,
    _FILE_MODE,
    _PATH_ERRNOS,
    _QUARANTINE_FLUSH,
    _READABLE_HEADERS,
    HEADER_VERSION,
    Batch,
    BufferFormatError,
    BufferFullError,
    BufferLockedError,
    BufferPathError,
    BufferStats,
    JsonlBufferError,
    RawBatch,
    T,
    _Bad,
    _line_timestamp,
    _parse_line,
    _parse_raw_line,
    format_line,
)
from ibkr_bridge.storage.buffer._quarantine import _Quarantine

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


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
