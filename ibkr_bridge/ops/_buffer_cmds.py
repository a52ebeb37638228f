"""``ibkr-bridge buffer status|drain|replay-rejected``: the buffer from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import TYPE_CHECKING, Final, TextIO

from ibkr_bridge.config import Settings
from ibkr_bridge.core.errors import JsonlBufferError, StoreError
from ibkr_bridge.core.redaction import redact_secrets
from ibkr_bridge.ops.exitcodes import EXIT_FAILURE, EXIT_LOCKED, EXIT_OK, exit_code_for
from ibkr_bridge.storage.buffer import JsonlBuffer

if TYPE_CHECKING:
    from ibkr_bridge.storage.drain import DrainProgress
    from ibkr_bridge.storage.replay import ReplayReport

from ibkr_bridge.ops._common import (
    PROG,
    _describe,
    _open_store,
    _schema_or_exit,
    _settings_or_exit,
)

log = logging.getLogger("ibkr_bridge")


# --- buffer ----------------------------------------------------------------------------


def cmd_buffer_status(args: argparse.Namespace) -> int:
    from ibkr_bridge.ops.doctor import render_buffer_status
    from ibkr_bridge.storage.buffer import inspect_buffer
    from ibkr_bridge.storage.drain import RejectedFile

    settings = _settings_or_exit(args)
    if isinstance(settings, int):
        return settings
    found = inspect_buffer(settings.buffer_path)
    rejected = RejectedFile(settings.buffer_path).summary()
    if args.json:
        print(json.dumps({**found.to_json(), "rejected": rejected.to_json()}, indent=2))
    else:
        print(render_buffer_status(found, rejected))
    return EXIT_FAILURE if found.error else EXIT_OK


class _DrainOutput:
    """A progress bar on a terminal, one plain line per batch elsewhere."""

    BAR: Final = 30

    def __init__(self, out: TextIO, total_bytes: int, total_records: int) -> None:
        self.out = out
        self.tty = out.isatty()
        self.total_bytes = max(total_bytes, 1)
        self.total_records = total_records
        self.drained = 0
        self._bar_shown = False

    def __call__(self, progress: DrainProgress, quarantined_in_batch: int) -> None:
        self.drained = progress.drained
        if self.tty:
            done = 1.0 - progress.pending_bytes / self.total_bytes
            filled = round(done * self.BAR)
            self.out.write(
                f"\r[{'#' * filled}{'-' * (self.BAR - filled)}] {done:4.0%}  "
                f"{progress.drained}/{self.total_records} records"
            )
            self._bar_shown = True
        else:
            self.out.write(
                f"batch {progress.batches}: {progress.drained} records drained, "
                f"{progress.rejected} rejected, {progress.quarantined} quarantined, "
                f"{progress.pending_bytes} bytes left\n"
            )
        self.out.flush()

    def finish(self) -> None:
        if self._bar_shown:
            self.out.write("\n")
            self.out.flush()
            self._bar_shown = False


async def _drain(settings: Settings, buffer: JsonlBuffer) -> int:
    from ibkr_bridge.storage.drain import RejectedFile, drain_buffer

    where = settings.database.redacted()
    store = await _open_store(settings)
    try:
        refused = await _schema_or_exit(settings, store, "nothing drained")
        if refused is not None:
            return refused
        pending = buffer.count_pending()
        if not pending:
            print(f"{buffer.path}: nothing to drain")
            return EXIT_OK
        rejects = RejectedFile(buffer.path)
        output = _DrainOutput(sys.stdout, buffer.pending_bytes, pending)
        try:
            result = await drain_buffer(
                buffer,
                store,
                batch_size=settings.batch_size,
                reject=rejects,
                on_batch=output,
            )
        except StoreError as exc:
            output.finish()
            print(
                f"{PROG}: {where}: {exc}; stopped after {output.drained} records, "
                "the rest stays in the buffer",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        output.finish()
    finally:
        await store.close()
    written = result.drained - result.rejected
    print(f"drained {written} records into {where}")
    if result.rejected:
        print(f"{result.rejected} records refused by PostgreSQL, kept in {rejects.path}")
    if result.quarantined:
        print(f"{result.quarantined} unreadable lines moved to {buffer.quarantine_path}")
    return EXIT_OK


def cmd_buffer_drain(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(args)
    if isinstance(settings, int):
        return settings
    buffer = JsonlBuffer(settings.buffer_path, max_bytes=settings.buffer_max_bytes)
    try:
        buffer.open()
    except (JsonlBufferError, OSError) as exc:
        code = exit_code_for(exc)
        print(
            f"{PROG}: {'refusing to drain: ' if code == EXIT_LOCKED else ''}{exc}", file=sys.stderr
        )
        return code
    try:
        return asyncio.run(_drain(settings, buffer))
    finally:
        buffer.close()


_LISTED: Final = 20  # lines named one by one in replay-rejected's text output


def _render_replay(report: ReplayReport, where: str) -> str:
    from ibkr_bridge.storage.drain import reason_of

    path = report.path
    if not report.exists:
        return f"{path}: no file: nothing was rejected"
    out = [f"{path}: {report.entries} entries"]
    if report.applied:
        out.append(
            f"sent {report.sent} records to {where} (any already there were skipped, not "
            "written twice)"
        )
    else:
        out.append(
            f"would send {report.sendable} records (dry run: nothing was sent; --apply sends)"
        )
    if report.by_kind:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(report.by_kind.items()))
        out.append(f"  by kind: {kinds}")
        out.append("  by reason they were rejected:")
        out.extend(f"    {n:>6}  {reason}" for reason, n in report.by_reason.most_common())

    def listed(title: str, items: list[tuple[int, str]]) -> None:
        if not items:
            return
        out.append(f"{title}: {len(items)}")
        out.extend(f"  line {n}: {redact_secrets(reason_of(text))}" for n, text in items[:_LISTED])
        if len(items) > _LISTED:
            out.append(f"  ... and {len(items) - _LISTED} more")

    stay = "kept in the file" if report.applied else "would stay in the file"
    listed(f"cannot be sent as they are, {stay}", report.unusable)
    listed("refused again by PostgreSQL, kept with the new reason", report.refused)
    if report.stopped is not None:
        why = redact_secrets(reason_of(report.stopped))
        out.append(
            f"stopped: {why}; {report.not_attempted} records not sent, kept in the file: "
            "run again when the database answers"
        )
    if report.applied:
        left = report.kept + report.appended_meanwhile
        out.append(
            f"{path}: {left} entries left"
            + (
                f" ({report.appended_meanwhile} added meanwhile)"
                if report.appended_meanwhile
                else ""
            )
            if left
            else f"{path}: removed, nothing left to replay"
        )
    return "\n".join(out)


async def _replay(settings: Settings, apply: bool) -> ReplayReport | int:
    from ibkr_bridge.storage.drain import RejectedFile, RejectedFileChangedError
    from ibkr_bridge.storage.replay import replay_rejected

    rejects = RejectedFile(settings.buffer_path)
    if not apply:
        return await replay_rejected(rejects, None)
    if not rejects.path.exists():
        return await replay_rejected(rejects, None)  # the same "no file" answer, no database
    store = await _open_store(settings)
    try:
        refused = await _schema_or_exit(settings, store, "nothing sent")
        if refused is not None:
            return refused
        try:
            return await replay_rejected(rejects, store, batch_size=settings.batch_size)
        except BlockingIOError:
            print(
                f"{PROG}: another replay-rejected is running on {rejects.path}",
                file=sys.stderr,
            )
            return EXIT_LOCKED
        except RejectedFileChangedError as exc:
            print(
                f"{PROG}: {exc}; it was left as it is. What was sent is in the database; "
                "run again to finish (nothing is written twice)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
    finally:
        await store.close()


def cmd_buffer_replay_rejected(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(args)
    if isinstance(settings, int):
        return settings
    try:
        report = asyncio.run(_replay(settings, args.apply))
    except OSError as exc:  # e.g. the file or its directory cannot be read or written
        print(f"{PROG}: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(report, int):
        return report
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(_render_replay(report, settings.database.redacted()))
    return EXIT_FAILURE if report.kept or report.stopped else EXIT_OK
