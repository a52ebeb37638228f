"""Draining the buffer into PostgreSQL: one function for the service, the CLI and benchmarks.

:func:`drain_buffer` copies the buffer into the database batch by batch, in order, and
advances the buffer's fsync'd cursor only after each batch's transaction committed (the
cursor is saved in a worker thread while the next batch is written): a crash at any
instant leads at worst to a replay of two batches, the one being written and the one
whose cursor was being saved, which the idempotency keys turn into no-ops. A batch
PostgreSQL refuses as data is retried line by line and each refused line is handed to
``reject`` (it never blocks the lines behind it). A transient failure propagates as
:class:`~ibkr_bridge.core.errors.TransientStoreError` with everything committed so far
kept.

Modules: ``_loop`` (:func:`drain_buffer`, overlapped reading and writing) and
``_rejected`` (:class:`RejectedFile`, ``<buffer>.rejected``).
"""

from __future__ import annotations

from ibkr_bridge.storage.drain._loop import DrainProgress, Reject, drain_buffer
from ibkr_bridge.storage.drain._rejected import (
    NO_REASON,
    REASON_CHARS,
    RejectedFile,
    RejectedFileChangedError,
    RejectedSnapshot,
    RejectedSummary,
    reason_of,
)

__all__ = [
    "NO_REASON",
    "REASON_CHARS",
    "DrainProgress",
    "Reject",
    "RejectedFile",
    "RejectedFileChangedError",
    "RejectedSnapshot",
    "RejectedSummary",
    "drain_buffer",
    "reason_of",
]
