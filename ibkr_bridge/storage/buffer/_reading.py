"""Reading lines from the cursor: the generic scan and the drain's bulk COPY read.

:meth:`_Reading.read_copy_batch` is the drain's path. It takes the lines of a batch in a
few large ``pread`` calls, each split as it is read (no per-line generator), decodes them with
:class:`~ibkr_bridge.storage.buffer._copy.CopyDecoder` into COPY tuples, and quarantines
the lines that cannot be used before the batch is returned. The drain runs its three steps
apart (:meth:`_Reading.take_lines`, the decoder, :meth:`_Reading.settle`) so that it can
decode in slices on the event loop between its COPY's callbacks; only the first and the
last step take the buffer's lock, so an append on the event loop never waits for decoding.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Final

from attrs import field, frozen

from ibkr_bridge.storage.buffer._copy import CopyDecoder
from ibkr_bridge.storage.buffer._fileio import _iter_lines
from ibkr_bridge.storage.buffer._format import Batch, RawBatch, T, _Bad
from ibkr_bridge.storage.buffer._recovery import _Recovering
from ibkr_bridge.storage.store import EventTuple, PositionTuple, RoutedGreeks

_READ: Final = 1 << 21  # bytes per pread of a bulk read: a 5,000-line batch in one or two


@frozen
class LineSpan:
    """Complete lines ``[start, end)`` of data file ``file_id``, taken but not yet decoded."""

    lines: list[bytes]
    start: int
    end: int
    file_id: str | None
    checksummed: bool


@frozen
class CopyBatch:
    """A batch as COPY tuples (``seq`` = the line's index among ``lines``), for the drain.

    ``greeks`` comes routed by table (:class:`~ibkr_bridge.storage.store.RoutedGreeks`);
    iterated, it gives the seq-first tuples in order. ``lines`` holds the batch's lines by
    ``seq`` (``quarantined`` of them are not in the tuples): a line the database refuses is
    handed to ``reject`` as its parsed record. Committed like any batch.
    """

    greeks: RoutedGreeks
    events: list[EventTuple]
    lines: list[bytes]
    start: int
    end: int
    quarantined: int
    file_id: str | None = None
    checksummed: bool = True
    positions: list[PositionTuple] = field(factory=list)

    @property
    def records(self) -> int:
        return len(self.greeks) + len(self.events) + len(self.positions)


AnyBatch = Batch | RawBatch | CopyBatch


class _Reading(_Recovering):
    """The buffer's reads; none moves the cursor (:meth:`JsonlBuffer.commit` does)."""

    def _start(self, after: AnyBatch | None) -> int:
        """Where a read begins: after ``after`` if that batch is of this file and not yet
        passed by the cursor, else at the cursor."""
        if (
            after is not None
            and after.file_id is not None
            and after.file_id == self._file_id
            and self._cursor <= after.end <= self._size
        ):
            return after.end
        return self._cursor

    def take_lines(self, max_records: int, *, after: AnyBatch | None = None) -> LineSpan:
        """Up to ``max_records`` complete lines from the cursor (or after ``after``)."""
        if max_records <= 0:
            raise ValueError(f"max_records must be positive, got {max_records}")
        with self._mutex:
            self._check_open()
            start = self._start(after)
            if self._fd is None:
                return LineSpan([], start, start, None, self._checksummed)
            # Split as read, at most the lines still wanted: no pass counting newlines,
            # and what lies beyond the batch stays one piece, not line objects thrown away.
            lines: list[bytes] = []
            rest, pos = b"", start
            while pos < self._size and len(lines) < max_records:
                chunk = os.pread(self._fd, min(_READ, self._size - pos), pos)
                if not chunk:
                    break
                pos += len(chunk)
                parts = (rest + chunk if rest else chunk).split(b"\n", max_records - len(lines))
                rest = parts.pop()  # beyond the last newline taken: the rest of the chunk
                lines += parts
            file_id, checksummed = self._file_id, self._checksummed
        end = start + sum(map(len, lines)) + len(lines)
        return LineSpan(lines, start, end, file_id, checksummed)

    def settle(
        self, span: LineSpan, decoder: CopyDecoder, bad: list[tuple[int, Exception]]
    ) -> CopyBatch:
        """Quarantine the span's bad lines (durably, before the batch can be committed)."""
        if bad:
            offsets = list(
                itertools.accumulate((len(x) + 1 for x in span.lines), initial=span.start)
            )
            entries = [
                _Bad(offsets[i], span.lines[i], "unreadable", f"{type(why).__name__}: {why}")
                for i, why in bad
            ]
            with self._mutex:
                self._check_open()
                # Lines of a file since drained and deleted are the deleted file's.
                if span.file_id is not None and span.file_id == self._file_id:
                    self._quarantine.add(entries)
        return CopyBatch(
            decoder.tables,
            decoder.events,
            span.lines,
            span.start,
            span.end,
            len(bad),
            span.file_id,
            span.checksummed,
            decoder.positions,
        )

    def read_copy_batch(self, max_records: int, *, after: AnyBatch | None = None) -> CopyBatch:
        """Like :meth:`read_raw_batch`, as COPY tuples: the drain's path, in one call."""
        span = self.take_lines(max_records, after=after)
        decoder = CopyDecoder(span.checksummed)
        return self.settle(span, decoder, decoder.decode(span.lines, 0, len(span.lines)))

    def _scan(
        self,
        max_lines: int,
        max_bytes: int | None,
        parse: Callable[[bytes, bool], T],
        after: AnyBatch | None = None,
    ) -> tuple[list[T], int, int, int, str | None]:
        """(items, start, end, quarantined, file_id) of the lines read from the cursor."""
        if max_lines <= 0:
            raise ValueError(f"max_records must be positive, got {max_lines}")
        with self._mutex:
            self._check_open()
            start = end = self._start(after)
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
