"""Crash-safe JSONL buffer: holds records on disk while PostgreSQL is unreachable.

Modules: ``_format`` (errors, batches, the checksummed line format), ``_quarantine``,
``_state``, ``_recovery`` and ``_reading`` (the layers under :class:`JsonlBuffer`),
``_copy`` (the drain's msgspec decoder), ``_jsonl`` (:class:`JsonlBuffer`), ``inspect``
(read-only :func:`inspect_buffer`).

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

A crash anywhere replays at most the batches not yet committed (at-least-once; the drain
has two in flight, one being written, one whose cursor is being saved); the records'
idempotency keys make the replay a no-op in the database. Every batch whose ``end > start``
must be committed even when it holds no records (all its lines were quarantined).

:meth:`JsonlBuffer.read_copy_batch` is the drain's path: the same lines as COPY tuples,
decoded by msgspec into typed records where a line is canonical and by the reference
parser otherwise, with the same result (see ``_copy``). :meth:`JsonlBuffer.read_raw_batch`
is that reference: it returns the parsed JSON objects (``{"v", "type", "key", "data"}``,
checksum removed) after the same validation :meth:`JsonlBuffer.read_batch` runs (the
records' own validators, as on the live path), re-encoded from the record only where a
converter would change a value. A line that fails is quarantined and skipped.

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

from ibkr_bridge.storage.buffer._format import (
    HEADER_VERSION,
    Batch,
    BufferFormatError,
    BufferFullError,
    BufferLockedError,
    BufferPathError,
    BufferStats,
    JsonlBufferError,
    RawBatch,
    format_line,
)
from ibkr_bridge.storage.buffer._jsonl import JsonlBuffer
from ibkr_bridge.storage.buffer._reading import CopyBatch, LineSpan
from ibkr_bridge.storage.buffer.inspect import BufferReport, inspect_buffer

__all__ = [
    "HEADER_VERSION",
    "Batch",
    "BufferFormatError",
    "BufferFullError",
    "BufferLockedError",
    "BufferPathError",
    "BufferReport",
    "BufferStats",
    "CopyBatch",
    "JsonlBuffer",
    "JsonlBufferError",
    "LineSpan",
    "RawBatch",
    "format_line",
    "inspect_buffer",
]
