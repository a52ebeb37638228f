"""The buffer's state and its file operations: the cursor file, creation, roll-back, deletion."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from ibkr_bridge.config import default_of
from ibkr_bridge.storage.buffer._fileio import _NOFOLLOW, _sync_dir, _write_all
from ibkr_bridge.storage.buffer._format import _FILE_MODE, HEADER_VERSION
from ibkr_bridge.storage.buffer._quarantine import _Quarantine

log = logging.getLogger(__name__)


class _BufferState:
    """What an open buffer knows about its files, and the changes it makes to them.

    Callers hold ``_mutex``; :class:`~ibkr_bridge.storage.buffer.JsonlBuffer` is the API.
    """

    def __init__(
        self, path: Path, *, max_bytes: int = default_of("buffer_max_bytes"), fsync: bool = True
    ) -> None:
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

    def _notice(self, message: str) -> None:
        log.warning("%s", message)
        self._notices.append(message)

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise RuntimeError(f"buffer {self.path} is not open")

    def _open_private(self, path: Path, flags: int) -> int:
        return os.open(path, flags | _NOFOLLOW, _FILE_MODE)

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

    @staticmethod
    def _header_line(file_id: str) -> bytes:
        header = {"v": HEADER_VERSION, "type": "header", "file_id": file_id}
        return json.dumps(header, separators=(",", ":")).encode() + b"\n"

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
