"""Sending ``<buffer>.rejected`` again, once the cause is fixed: ``buffer replay-rejected``.

Each entry's record goes through the same validation as a live row (it is rebuilt as a
:class:`~ibkr_bridge.core.records.GreeksRow` or :class:`~ibkr_bridge.core.records.ApiEvent`, whose
validators refuse NaN, infinities, naive timestamps, unknown statuses) and then through the
store's idempotent write (``ON CONFLICT (bridge_key) DO NOTHING``): a record already in the
database is skipped, so a replay run twice, or interrupted and run again, writes nothing
twice.

Without ``apply`` nothing is sent and nothing changes: the report says what would be sent,
by kind and by the reason it was rejected. With ``apply`` the file is then rewritten
atomically (:meth:`~ibkr_bridge.storage.drain.RejectedFile.replace`) with only the entries that
still fail, in their order: lines that are not entries or whose record is invalid (kept as
they are), records PostgreSQL refuses again (kept with the new reason), and, when the
database becomes unreachable part way, everything not yet committed. Entries a running
bridge appends meanwhile are kept too.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from ibkr_bridge.core.errors import PermanentStoreError, TransientStoreError
from ibkr_bridge.core.records import Record, record_from_json
from ibkr_bridge.storage.buffer._fileio import _iter_lines, _write_all
from ibkr_bridge.storage.drain import NO_REASON, RejectedFile, reason_of
from ibkr_bridge.storage.store import Store


@attrs.frozen
class Entry:
    """One line of ``.rejected``: its record when it can be sent, else why not."""

    line: int  # 1-based line number in the file
    raw: bytes  # the line without its newline
    reason: str  # why it was rejected (grouping form)
    record: Record | None
    problem: str | None  # why it cannot be sent as it is


@attrs.define
class ReplayReport:
    """What a replay found and did. ``sent`` counts committed records (already present
    ones included); everything in ``kept_*`` is still in the file."""

    path: Path
    applied: bool
    exists: bool = True
    entries: int = 0
    by_kind: Counter[str] = attrs.field(factory=Counter)  # sendable (dry run) or sent
    by_reason: Counter[str] = attrs.field(factory=Counter)
    sent: int = 0
    unusable: list[tuple[int, str]] = attrs.field(factory=list)  # (line, problem)
    refused: list[tuple[int, str]] = attrs.field(factory=list)  # (line, PostgreSQL's error)
    not_attempted: int = 0  # after the database became unreachable
    stopped: str | None = None  # that error
    appended_meanwhile: int = 0  # entries a running bridge added during the replay

    @property
    def sendable(self) -> int:
        return sum(self.by_kind.values())

    @property
    def kept(self) -> int:
        """Entries of this run that stay in the file (appended ones not counted)."""
        return len(self.unusable) + len(self.refused) + self.not_attempted

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "exists": self.exists,
            "applied": self.applied,
            "entries": self.entries,
            "would_send": None if self.applied else self.sendable,
            "sent": self.sent,
            "by_kind": dict(self.by_kind),
            "by_reason": dict(self.by_reason),
            "unusable": [{"line": n, "problem": p} for n, p in self.unusable],
            "refused": [{"line": n, "error": e} for n, e in self.refused],
            "not_attempted": self.not_attempted,
            "stopped": self.stopped,
            "kept": self.kept,
            "appended_meanwhile": self.appended_meanwhile,
        }


def parse_entry(line: int, raw: bytes) -> Entry:
    """One ``.rejected`` line; never raises (a bad line is an Entry with a problem)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 is a ValueError too
        return Entry(line, raw, NO_REASON, None, f"not JSON: {exc}")
    if not isinstance(obj, dict):
        return Entry(line, raw, NO_REASON, None, "not a .rejected entry (not a JSON object)")
    reason = reason_of(obj.get("error"))
    text = obj.get("record")
    if not isinstance(text, str):
        return Entry(line, raw, reason, None, 'not a .rejected entry (no "record" string)')
    try:
        record = record_from_json(text)
    except (ValueError, TypeError, RecursionError) as exc:
        # RecordFormatError mostly; a hand-edited line can also trip the decoder itself
        # (``"data": ["abc"]``, nesting too deep) and must be reported, not crash.
        return Entry(line, raw, reason, None, f"invalid record: {exc}")
    return Entry(line, raw, reason, record, None)


def read_entries(fd: int, size: int) -> Iterator[Entry]:
    """The entries in the first ``size`` bytes of ``fd``, in order (blank lines skipped)."""
    # A last line without its newline is an entry too: the file's own reader yields it.
    for line, (_, raw, _complete) in enumerate(_iter_lines(fd, 0, size), start=1):
        if raw.strip():
            yield parse_entry(line, raw)


async def replay_rejected(
    rejects: RejectedFile,
    store: Store | None,
    *,
    batch_size: int = 500,
) -> ReplayReport:
    """Dry run when ``store`` is None, else send and rewrite the file (see the module)."""
    report = ReplayReport(rejects.path, applied=store is not None)
    found = rejects.snapshot()
    if found is None:
        report.exists = False
        return report
    fd, snapshot = found
    replacement: int | None = None
    try:
        if store is not None:
            replacement = rejects.open_replacement()  # BlockingIOError: another replay
        batch: list[Entry] = []
        for entry in read_entries(fd, snapshot.size):
            report.entries += 1
            if entry.record is None:
                assert entry.problem is not None
                report.unusable.append((entry.line, entry.problem))
            elif store is None:
                report.by_kind[entry.record.type] += 1
                report.by_reason[entry.reason] += 1
            if store is None:
                continue
            batch.append(entry)
            if len(batch) >= batch_size:
                assert replacement is not None
                await _send(store, batch, report, replacement)
                batch = []
        if store is not None:
            assert replacement is not None
            await _send(store, batch, report, replacement)
            fd_to_close, replacement = replacement, None
            report.appended_meanwhile = rejects.replace(snapshot, fd_to_close)
    finally:
        os.close(fd)
        if replacement is not None:
            os.close(replacement)  # the file itself stays as it was
    return report


async def _send(store: Store, batch: list[Entry], report: ReplayReport, out: int) -> None:
    refused: dict[int, str] = {}
    committed: set[int] = set()
    sendable = [e for e in batch if e.record is not None]
    if sendable and report.stopped is None:
        try:
            await store.write([e.record for e in sendable if e.record is not None])
            committed = {e.line for e in sendable}
        except TransientStoreError as exc:
            report.stopped = str(exc)
        except PermanentStoreError:
            # Some record in the batch is refused as data: one by one, as the drain does,
            # so one bad record never holds back the others.
            for entry in sendable:
                assert entry.record is not None
                if report.stopped is not None:
                    break
                try:
                    await store.write([entry.record])
                    committed.add(entry.line)
                except TransientStoreError as exc:
                    report.stopped = str(exc)
                except PermanentStoreError as exc:
                    refused[entry.line] = str(exc)
    kept: list[bytes] = []
    for entry in batch:
        if entry.record is None:
            kept.append(entry.raw)
        elif entry.line in committed:
            report.sent += 1
            report.by_kind[entry.record.type] += 1
            report.by_reason[entry.reason] += 1
        elif entry.line in refused:
            report.refused.append((entry.line, refused[entry.line]))
            kept.append(_with_error(entry.raw, refused[entry.line]))
        else:
            report.not_attempted += 1
            kept.append(entry.raw)
    if kept:
        _write_all(out, b"".join(line + b"\n" for line in kept))


def _with_error(raw: bytes, error: str) -> bytes:
    entry = json.loads(raw)
    entry["error"] = error
    entry.setdefault("rejected_at", datetime.now(UTC).isoformat())
    return json.dumps(entry, separators=(",", ":")).encode()
