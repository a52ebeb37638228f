"""Where lines the buffer cannot read go: the quarantine file beside the buffer."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ibkr_bridge.storage.buffer._fileio import _NOFOLLOW, _iter_lines, _sync_data, _write_all
from ibkr_bridge.storage.buffer._format import _FILE_MODE, _Bad, _digest

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


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
