"""The doctor's buffer check: pending records, sizes, quarantine and rejected rows, read-only."""

from __future__ import annotations

import os
from pathlib import Path

from ibkr_bridge.core.redaction import redact_secrets
from ibkr_bridge.ops._report import _NEAR_FULL, CheckResult, Status, _describe
from ibkr_bridge.storage.buffer import inspect_buffer
from ibkr_bridge.storage.drain import RejectedFile, RejectedSummary, reason_of

# --- buffer ----------------------------------------------------------------------------


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def check_buffer(path: Path, max_bytes: int) -> CheckResult:
    try:
        found = inspect_buffer(path)
    except OSError as exc:
        return CheckResult("buffer", "FAIL", f"{path}: {_describe(exc)}", {"path": str(path)})
    data = found.to_json()
    s = found.stats
    if found.error:
        return CheckResult("buffer", "FAIL", f"{s.path}: {found.error}", data)
    lines: list[str] = []
    status: Status = "OK"
    if not found.exists:
        parent = _existing_parent(s.path)
        if not os.access(parent, os.W_OK | os.X_OK):
            return CheckResult(
                "buffer", "FAIL", f"{s.path}: cannot be created ({parent} is not writable)", data
            )
        lines.append(f"{s.path}: no buffer file (nothing pending)")
    elif s.records_pending:
        status = "WARN"
        lines.append(
            f"{s.path}: {s.records_pending} records pending ({_size(s.pending_bytes)}), "
            f"oldest {s.oldest.isoformat() if s.oldest else '?'}, "
            f"newest {s.newest.isoformat() if s.newest else '?'}"
        )
    else:
        lines.append(f"{s.path}: nothing pending ({_size(s.file_bytes)} file)")
    if found.locked_by is not None:
        lines.append(f"in use by a running bridge (pid {found.locked_by})")
    elif s.records_pending:
        lines.append("drained when the bridge starts, or now with `ibkr-bridge buffer drain`")
    if s.file_bytes >= _NEAR_FULL * max_bytes:
        status = "WARN"
        lines.append(f"{_size(s.file_bytes)} of its {_size(max_bytes)} cap used")
    if s.quarantined_lines:
        status = "WARN"
        lines.append(f"{s.quarantined_lines} unreadable lines kept in {found.quarantine_path}")
    if found.notes:
        status = "WARN"
        lines.extend(found.notes)
    rejected = RejectedFile(path).summary()
    data["rejected"] = rejected.to_json()
    if rejected.records or rejected.error:
        status = "WARN"
        lines.append(
            f"{rejected.records} records refused by PostgreSQL kept in {rejected.path}"
            if not rejected.error
            else f"{rejected.path}: {rejected.error}"
        )
        if rejected.records:
            lines.append("see them with `ibkr-bridge buffer replay-rejected`, send with --apply")
    return CheckResult("buffer", status, "\n".join(lines), data)


def _rejected_rows(rejected: RejectedSummary) -> list[tuple[str, str]]:
    rows = [("rejected", f"{rejected.records} records ({rejected.path})")]
    if rejected.error:
        rows.append(("rejected error", rejected.error))
    elif rejected.records:
        when = rejected.oldest_at.isoformat() if rejected.oldest_at else "time not recorded"
        reason = redact_secrets(reason_of(rejected.oldest_error))
        rows.append(("oldest reject", f"{when}: {reason}"))
        rows.append(("replay", "`ibkr-bridge buffer replay-rejected` (dry run, then --apply)"))
    return rows


def _existing_parent(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent
