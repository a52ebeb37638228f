"""Opening a buffer: the lock, the files' shapes and modes, and recovery from a crash."""

from __future__ import annotations

import fcntl
import json
import os
import stat

from ibkr_bridge.storage.buffer._fileio import (
    _NOFOLLOW,
    _iter_lines,
    _read_nofollow,
    _rfind_newline,
)
from ibkr_bridge.storage.buffer._format import (
    _FILE_MODE,
    _QUARANTINE_FLUSH,
    _READABLE_HEADERS,
    BufferFormatError,
    BufferLockedError,
    BufferPathError,
    _Bad,
)
from ibkr_bridge.storage.buffer._state import _BufferState


class _Recovering(_BufferState):
    """Open-time work: lock, refuse a path of the wrong shape, repair what a crash left."""

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
