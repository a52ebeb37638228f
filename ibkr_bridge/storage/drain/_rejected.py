"""``<buffer>.rejected``: the records PostgreSQL refused as data, kept for a human."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import attrs

from ibkr_bridge.core.errors import RejectedFileChangedError as RejectedFileChangedError
from ibkr_bridge.storage.buffer._fileio import _sync_dir, _write_all


@attrs.frozen
class RejectedSummary:
    """What ``buffer status`` and ``check`` say about ``<buffer>.rejected`` (read-only)."""

    path: Path
    records: int  # entries (lines) in the file
    oldest_error: str | None  # the first entry's reason, as PostgreSQL gave it
    oldest_at: datetime | None  # when it was rejected (None for entries older than the field)
    error: str | None = None  # the file could not be read

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "records": self.records,
            "oldest_error": self.oldest_error,
            "oldest_at": self.oldest_at.isoformat() if self.oldest_at else None,
            "error": self.error,
        }


@attrs.frozen
class RejectedSnapshot:
    """The file as it was when a replay started: which file, and how much of it."""

    identity: tuple[int, int]  # (st_dev, st_ino)
    size: int


class RejectedFile:
    """``<buffer>.rejected``: records PostgreSQL refused as data, kept for a human.

    One JSON object per line, ``{"error": ..., "rejected_at": ..., "record": <the buffer
    line>}``, appended and fsync'd, mode 0600 (the records hold account data). Usable as a
    :data:`Reject`.

    ``ibkr-bridge buffer replay-rejected`` rewrites the file while a bridge may be appending
    to it, so both take an exclusive ``flock`` on the file for each change, and an appender
    that got the lock on a file already replaced (renamed over) opens the new one again.
    """

    def __init__(self, buffer_path: Path, *, now: Callable[[], datetime] | None = None) -> None:
        self.path = Path(str(buffer_path) + ".rejected")
        self.replacement_path = Path(str(self.path) + ".replay")
        self._now = now or (lambda: datetime.now(UTC))

    def __call__(self, line: str, error: str) -> None:
        entry = json.dumps(
            {"error": error, "rejected_at": self._now().isoformat(), "record": line},
            separators=(",", ":"),
        )
        # O_NOFOLLOW (in _open_locked): never append account data through a planted link.
        fd = _open_locked(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, fcntl.LOCK_EX)
        try:
            _write_all(fd, entry.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock

    def summary(self) -> RejectedSummary:
        """Count the entries and read the oldest one, without locking or changing anything."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return RejectedSummary(self.path, 0, None, None)
        except OSError as exc:
            return RejectedSummary(self.path, 0, None, None, f"{type(exc).__name__}: {exc}")
        try:
            first = os.pread(fd, _FIRST_LINE_MAX, 0).split(b"\n", 1)[0]
            records = pos = 0
            last = b"\n"
            while chunk := os.pread(fd, _CHUNK, pos):
                records += chunk.count(b"\n")
                last = chunk[-1:]
                pos += len(chunk)
            if last != b"\n":
                records += 1  # a last line without its newline is an entry too
        except OSError as exc:
            return RejectedSummary(self.path, 0, None, None, f"{type(exc).__name__}: {exc}")
        finally:
            os.close(fd)
        reason, when = _reason_and_time(first)
        return RejectedSummary(self.path, records, reason, when)

    def snapshot(self) -> tuple[int, RejectedSnapshot] | None:
        """A read-only fd on the file and how far it reaches now (None: no file).

        The size is read under the lock, so it ends after a whole entry; the bytes before it
        never change (appends only add after it), so they can be read without the lock.
        """
        try:
            fd = _open_locked(self.path, os.O_RDONLY, fcntl.LOCK_SH)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        return fd, RejectedSnapshot((st.st_dev, st.st_ino), st.st_size)

    def open_replacement(self) -> int:
        """The file a replay writes what still fails to: created 0600, locked, emptied.

        Raises BlockingIOError when another replay holds it.
        """
        fd = _open_locked(
            self.replacement_path, os.O_RDWR | os.O_CREAT, fcntl.LOCK_EX | fcntl.LOCK_NB
        )
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def replace(self, snapshot: RejectedSnapshot, replacement: int) -> int:
        """Atomically make ``replacement`` (what still fails) the file, plus what was appended
        since ``snapshot``; an empty result removes the file. Returns the appended count.

        Closes ``replacement``. Raises RejectedFileChangedError (leaving the file as it is)
        when the file was moved or replaced since the snapshot.
        """
        try:
            try:
                fd = _open_locked(self.path, os.O_RDONLY, fcntl.LOCK_EX)
            except FileNotFoundError:
                raise RejectedFileChangedError(
                    f"{self.path} was moved away during the replay"
                ) from None
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != snapshot.identity or st.st_size < snapshot.size:
                    raise RejectedFileChangedError(f"{self.path} was replaced during the replay")
                with contextlib.suppress(PermissionError):
                    # Run as root (to read the root-only settings), the replacement must
                    # still belong to the bridge's user, or its next append would fail.
                    os.fchown(replacement, st.st_uid, st.st_gid)
                appended = 0
                pos = snapshot.size
                while chunk := os.pread(fd, _CHUNK, pos):
                    _write_all(replacement, chunk)
                    appended += chunk.count(b"\n")
                    pos += len(chunk)
                if os.fstat(replacement).st_size == 0:
                    self.path.unlink()
                    self.replacement_path.unlink()
                else:
                    os.fsync(replacement)
                    os.replace(self.replacement_path, self.path)
                _sync_dir(self.path.parent)
                return appended
            finally:
                os.close(fd)  # an appender waiting on the old file now finds the new one
        finally:
            os.close(replacement)


_CHUNK: Final = 1 << 18
_FIRST_LINE_MAX: Final = 1 << 20
REASON_CHARS: Final = 120  # reasons are grouped and shown by their first line, this long
NO_REASON: Final = "(no reason recorded)"


def reason_of(error: object) -> str:
    """The short form of a recorded reason: its first line (PostgreSQL's DETAIL line quotes
    the whole row), truncated."""
    if not isinstance(error, str) or not error.strip():
        return NO_REASON
    first = error.strip().splitlines()[0]
    return first if len(first) <= REASON_CHARS else first[: REASON_CHARS - 1] + "…"


def _reason_and_time(line: bytes) -> tuple[str | None, datetime | None]:
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):  # a hand-edited line: shown as "no reason"
        return None, None
    if not isinstance(entry, dict):
        return None, None
    error = entry.get("error")
    when: datetime | None = None
    with contextlib.suppress(KeyError, TypeError, ValueError):
        when = datetime.fromisoformat(entry["rejected_at"])
    return (error if isinstance(error, str) else None), when


def _open_locked(path: Path, flags: int, lock: int) -> int:
    """Open ``path`` and ``flock`` it; if it was renamed over meanwhile, open the new one."""
    while True:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, lock)
            st = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # replaced or removed while we waited: try the file there now
