"""Low-level file IO of the buffer: whole writes, fsync of data and directory, no-follow reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

# Open flags of every buffer file: a symlink planted at one of its names is never followed
# (it would have the target chmod'ed, read as data or overwritten).
_NOFOLLOW: Final = os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK: Final = 1 << 18


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
