"""What a connection to IBKR must provide, whatever the mode (SOCKET or PORTAL).

A :class:`Feed` connects, reports what happens on the connection to a
:class:`FeedListener` (the Bridge's lifecycle driver), answers a liveness probe, and turns
the latest market state into Greeks rows on demand. It holds no timers and writes
nothing: cadence, retries and storage belong to the Bridge.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from ibkr_bridge.core.records import GreeksRow, Status


class FeedListener(Protocol):
    """Callbacks a feed makes; all are synchronous and must not block."""

    def feed_disconnected(self, reason: str) -> None:
        """The connection is gone (socket closed, session lost)."""

    def feed_data_lost(self, code: int, message: str) -> None:
        """Still connected, but the data is stale (IB 1100): stop writing."""

    def feed_data_restored(self, code: int, message: str, *, resubscribe: bool) -> None:
        """Data flows again (IB 1101: re-subscribe first; 1102: as before)."""

    def feed_event(
        self,
        event: str,
        message: str,
        *,
        status: Status = "info",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Something worth an ``api_logs`` row (e.g. 326, a 429, a skipped garbage frame)."""


class Feed(Protocol):
    """One mode's connection to IBKR."""

    mode: str

    def set_listener(self, listener: FeedListener) -> None: ...

    @property
    def account(self) -> str | None:
        """The account being reported on, once known."""

    async def connect(self) -> None:
        """Connect and subscribe; raise on failure (the driver decides what comes next)."""

    async def disconnect(self) -> None:
        """Close quietly; never raises."""

    async def probe(self) -> None:
        """One round trip to the gateway; raise (or hang, the driver times it out) if frozen."""

    async def resubscribe(self) -> None:
        """Renew market-data subscriptions (after IB 1101)."""

    def snapshot(self, now: datetime) -> list[GreeksRow] | None:
        """Rows for this instant, or None when there is no trustworthy state to report."""


class LoggingListener(FeedListener):
    """The listener a feed has until :meth:`Feed.set_listener`: it only logs what it hears.

    ``disconnect_level`` is the level of ``feed_disconnected``; ``level`` that of the other
    callbacks, or None to drop them (the PORTAL feed's choice: only a lost session matters).
    """

    def __init__(self, logger: logging.Logger, *, disconnect_level: int, level: int | None) -> None:
        self._log = logger
        self._disconnect_level = disconnect_level
        self._level = level

    def feed_disconnected(self, reason: str) -> None:
        self._log.log(self._disconnect_level, "feed disconnected: %s", reason)

    def feed_data_lost(self, code: int, message: str) -> None:
        self._code(code, message)

    def feed_data_restored(self, code: int, message: str, *, resubscribe: bool) -> None:
        self._code(code, message)

    def feed_event(self, event: str, message: str, **_ignored: object) -> None:
        if self._level is not None:
            self._log.log(self._level, "%s: %s", event, message)

    def _code(self, code: int, message: str) -> None:
        if self._level is not None:
            self._log.log(self._level, "IB %d: %s", code, message)
