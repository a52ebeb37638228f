"""The crash-safe JSONL buffer itself: open, append, read, commit the cursor, stats."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from ibkr_bridge.core.records import Record
from ibkr_bridge.storage.buffer._fileio import (
    _CHUNK,
    _iter_lines,
    _rfind_newline,
    _sync_data,
    _write_all,
)
from ibkr_bridge.storage.buffer._format import (
    _DIR_MODE,
    _PATH_ERRNOS,
    Batch,
    BufferFullError,
    BufferPathError,
    BufferStats,
    JsonlBufferError,
    RawBatch,
    _line_timestamp,
    _parse_line,
    _parse_raw_line,
    format_line,
)
from ibkr_bridge.storage.buffer._reading import AnyBatch, _Reading

log = logging.getLogger(__name__)


class JsonlBuffer(_Reading):
    """The on-disk buffer; see the module docstring for files, protocol and policies."""

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
        after: AnyBatch | None = None,
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
        after: AnyBatch | None = None,
    ) -> RawBatch:
        """Like :meth:`read_batch`, returning parsed JSON objects (the drain's fast path)."""
        return RawBatch(*self._scan(max_records, max_bytes, _parse_raw_line, after))

    def commit(self, batch: AnyBatch) -> None:
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
