"""What the Bridge shows its observers: tick and status records, and the view health needs.

The health endpoint depends on :class:`BridgeView` (which the Bridge satisfies), not on the
Bridge itself, so the Bridge can start a health server without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import attrs

from ibkr_bridge.config import Settings
from ibkr_bridge.core.records import ApiEvent, GreeksRow
from ibkr_bridge.storage.sink import DurableWriter

RowCallback = Callable[[Sequence[GreeksRow]], None]
EventCallback = Callable[[ApiEvent], None]


@attrs.frozen
class TickInfo:
    """What one tick of the writer did, for metrics."""

    duration: float  # seconds spent aggregating and handing rows to the writer
    rows: int
    skipped: str | None  # why nothing was written, or None


@attrs.frozen
class BridgeStatus:
    """A read-only view of the bridge, for health checks and the demo."""

    mode: str
    connection: str
    breaker: str
    stale: bool
    account: str | None
    last_row_at: datetime | None
    last_rows: tuple[GreeksRow, ...]
    rows_submitted: int
    ticks_missed: int
    ticks_skipped: int
    buffer_pending_bytes: int
    # From the last tick's staleness verdict (docs/greeks.md); cleared when LIVE ends.
    greeks_stale: bool = False  # an option leg's Greeks too old, or a data farm broken
    legs_missing: tuple[str, ...] = ()  # option legs without current Greeks, past grace
    degraded: str | None = None  # what the rows lack (or why none are written), else None
    positions_submitted: int = 0  # position_greeks rows (BRIDGE_POSITION_ROWS)


class BridgeView(Protocol):
    """The read-only status and observation hooks of a running bridge."""

    @property
    def settings(self) -> Settings: ...

    @property
    def status(self) -> BridgeStatus: ...

    @property
    def sink(self) -> DurableWriter:
        """The durable writer; raises LifecycleError before the bridge has started."""
        ...

    def add_row_callback(self, callback: RowCallback) -> None: ...

    def add_event_callback(self, callback: EventCallback) -> None: ...

    def add_tick_callback(self, callback: Callable[[TickInfo], None]) -> None: ...
