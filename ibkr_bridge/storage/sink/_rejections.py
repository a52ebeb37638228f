"""Rejection isolation and episodes: a record refused as data never blocks the rest.

A batch PostgreSQL refuses as data is retried row by row; the refused rows go to
``<buffer>.rejected`` and are reported once per run of refusals. A run longer than
``max_consecutive_rejections`` is taken for the environment: the breaker opens and the
run's records wait, until a probe finds the tables take well-formed records after all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import attrs

from ibkr_bridge.core.errors import PermanentStoreError, TransientStoreError
from ibkr_bridge.core.records import (
    ApiEvent,
    GreeksRow,
    Record,
    RecordFormatError,
    new_key,
    record_from_json,
    record_to_json,
)
from ibkr_bridge.storage.drain import DrainProgress
from ibkr_bridge.storage.sink._base import REJECTION_EVENTS, _Suspect, log
from ibkr_bridge.storage.sink._spill import _SpillPath


def _about_rejections(records: Sequence[Record]) -> bool:
    return all(isinstance(r, ApiEvent) and r.event in REJECTION_EVENTS for r in records)


class _Rejections(_SpillPath):
    """Isolates records refused as data and reports each run of refusals once."""

    async def _isolate(self, batch: Sequence[Record]) -> None:
        """A batch PostgreSQL refused as data: write it row by row, reject the bad ones."""
        for i, record in enumerate(batch):
            try:
                await self._store.write([record])
            except PermanentStoreError as exc:
                try:
                    self._reject(record_to_json(record), str(exc), in_buffer=False)
                except TransientStoreError as too_many:
                    # Too many refusals in a row: the rest waits, like in an outage.
                    self._append(list(batch[i:]))
                    self._trip(too_many)
                    return
            except TransientStoreError as exc:
                # The database went away meanwhile: the rest waits in the buffer, in order.
                self._append(list(batch[i:]))
                self._trip(exc)
                return
            else:
                self._written += 1
                self._accepted([record])

    def _reject(self, line: str, error: str, *, in_buffer: bool = True) -> None:
        """Keep a refused record in ``.rejected``; raise once refusals are the environment.

        Also the drain's ``reject`` callback (its lines stay in the buffer until the batch
        commits, hence ``in_buffer``): the TransientStoreError raised here ends that drain
        with the batch uncommitted, exactly like an outage.
        """
        if self._streak >= self._max_rejections and not self._refusals_are_data:
            self._streak += 1
            self._requeue_suspects()
            raise TransientStoreError(
                f"{self._streak} records in a row refused as data: the database refuses "
                f"everything, so the records wait (last error: {error})"
            )
        obj = json.loads(line)
        self._streak += 1
        if obj.get("key") not in self._requeued_keys:
            self._rejected += 1
            self._rejected_file(line, error)
            self._episode_rejected += 1
        self._suspects.append(_Suspect(line, in_buffer))
        log.debug("refused as data (run of %d): %s: %s", self._streak, obj.get("key"), error)
        about_rejections = (
            obj.get("type") == ApiEvent.type
            and obj.get("data", {}).get("event") in REJECTION_EVENTS
        )
        if self._episode_open or about_rejections:
            return  # counted; an event about a refused event about refusals would loop
        self._episode_open = True
        path = self._rejected_file.path
        self.log_event(
            "rejected",
            f"PostgreSQL refused a record as data; kept in {path.name}: {error} "
            "(further refusals in a row are counted, not reported one by one)",
            status="error",
            detail={"key": obj.get("key"), "error": error, "file": str(path)},
        )

    def _requeue_suspects(self) -> None:
        """The run's rejected records were the environment's victims: let them wait too."""
        records: list[Record] = []
        for suspect in self._suspects:
            if suspect.in_buffer:
                continue  # the uncommitted drain batch still holds it
            try:
                records.append(record_from_json(suspect.line))
            except (RecordFormatError, ValueError, TypeError):
                continue  # unreadable as a record: it stays in .rejected only
        self._suspects.clear()
        if records:
            self._episode_requeued += len(records)
            self._requeued_keys.update(r.key for r in records)
            self._append(records)

    async def _judge_refusals(self) -> None:
        """On a probe after too many refusals in a row: environment, or bad data after all?"""
        if self._streak <= self._max_rejections or self._refusals_are_data:
            return
        now = self._clock.now()
        model = self._last_row or GreeksRow(timestamp=now, account="", api_mode=self._api_mode)
        well_formed: list[Record] = [
            attrs.evolve(model, key=new_key(), timestamp=now),
            ApiEvent(
                timestamp=now,
                api_mode=self._api_mode,
                event="probe",
                message="does the table take a well-formed record? (rolled back)",
            ),
        ]
        if not await self._store.accepts(well_formed):
            raise TransientStoreError(
                "the tables refuse well-formed records too: the records keep waiting"
            )
        # They do: the run was bad data. Reject it as such rather than block the buffer.
        self._refusals_are_data = True
        log.warning("the tables take well-formed records: the refused ones are bad data")

    def _accepted(self, records: Sequence[Record]) -> None:
        """Records were written: a run of refusals, if any, is over."""
        for record in records:
            if isinstance(record, GreeksRow):
                self._last_row = record
        if records and not _about_rejections(records):
            self._end_rejection_episode()

    def _rejections_in_batch(self, progress: DrainProgress) -> None:
        """After each committed drain batch: its lines left the buffer; did any succeed?"""
        seen = (0, 0) if progress.batches == 1 else self._batch_seen
        self._batch_seen = (progress.drained, progress.rejected)
        rejected = progress.rejected - seen[1]
        accepted = progress.drained - seen[0] - rejected
        for suspect in self._suspects:
            suspect.in_buffer = False
        if not accepted:
            return
        if not rejected:
            self._end_rejection_episode()
            return
        # Some lines went in, some were refused, order unknown: count the refusals as the
        # current run (the cautious reading, sooner treated as the environment).
        self._streak = rejected
        del self._suspects[:-rejected]

    def _end_rejection_episode(self) -> None:
        self._streak = 0
        self._suspects.clear()
        self._requeued_keys.clear()
        self._refusals_are_data = False
        if not self._episode_open:
            self._episode_rejected = self._episode_requeued = 0
            return
        rejected, requeued = self._episode_rejected, self._episode_requeued
        self._episode_open = False
        self._episode_rejected = self._episode_requeued = 0
        path = self._rejected_file.path
        again = f", {requeued} of them queued again in the buffer" if requeued else ""
        self.log_event(
            "rejections_ended",
            f"PostgreSQL accepts records again; {rejected} record(s) were refused as data "
            f"in a row and kept in {path.name}{again}",
            status="warning",
            detail={"rejected": rejected, "requeued": requeued, "file": str(path)},
        )
