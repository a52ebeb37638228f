"""What a Bridge is built from: its feed, its watchdog policy, and its opened storage.

Storage opens in order (database, schema, buffer, durable writer) and closes again what
it opened when a later step fails, so a failed open leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs

from ibkr_bridge.config import ApiMode, Settings
from ibkr_bridge.core.clock import Clock
from ibkr_bridge.core.errors import SchemaError, StoreError
from ibkr_bridge.core.resetwindow import WatchdogPolicy
from ibkr_bridge.feeds.protocol import Feed
from ibkr_bridge.service.status import EventCallback
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.sink import DurableWriter
from ibkr_bridge.storage.store import PositionTables, Store

__all__ = [
    "Storage",
    "describe_target",
    "make_feed",
    "open_storage",
    "start_sink",
    "watchdog_policy",
]

log = logging.getLogger(__name__)


def watchdog_policy(settings: Settings) -> WatchdogPolicy:
    """The connection watchdog's timing rules, from ``settings``."""
    return WatchdogPolicy(**settings.watchdog_kwargs())


def make_feed(settings: Settings, clock: Clock) -> Feed:
    """The feed for ``settings.api_mode``."""
    if settings.api_mode is ApiMode.SOCKET:
        from ibkr_bridge.feeds.socket.feed import SocketFeed

        return SocketFeed.from_settings(settings, clock)
    from ibkr_bridge.feeds.portal.feed import PortalFeed

    return PortalFeed.from_settings(settings, clock)


def describe_target(settings: Settings) -> str:
    """Where the bridge connects, for its ``connect`` events."""
    s = settings
    if s.api_mode is ApiMode.SOCKET:
        return f"{s.socket_host}:{s.socket_port} clientId {s.client_id}"
    return s.gateway_url


@attrs.frozen
class Storage:
    """The opened database, buffer and the durable writer over both."""

    store: Store
    buffer: JsonlBuffer
    sink: DurableWriter


async def open_storage(
    settings: Settings, *, mode: str, clock: Clock, listeners: Iterable[EventCallback]
) -> Storage:
    """Open the database and the buffer and build the (not yet started) durable writer.

    Raises with nothing left open; the caller keeps the result before :func:`start_sink`,
    so its ``stop`` closes what a failing writer start leaves open.
    """
    s = settings
    store = await Store.open(
        **s.database.connect_kwargs(),
        connect_timeout=s.db_connect_timeout,
        command_timeout=s.db_command_timeout,
        positions=(
            PositionTables(retention_days=s.retention_days, now=clock.now)
            if s.position_rows
            else None
        ),
    )
    try:
        await store.ensure_schema()
    except SchemaError:
        await store.close()
        raise
    except StoreError as exc:
        # The database being down at start is an outage like any other: rows wait
        # in the buffer and the schema is ensured again before the first drain.
        log.warning("database not reachable at start (%s): buffering until it is", exc)
    buffer = JsonlBuffer(s.buffer_path, max_bytes=s.buffer_max_bytes)
    try:
        buffer.open()
    except BaseException:
        # Nothing started yet: leave nothing open behind (stop() sees no buffer).
        await store.close()
        raise
    sink = DurableWriter(
        store,
        buffer,
        api_mode=mode,
        clock=clock,
        retry_interval=s.retry_interval,
        batch_size=s.batch_size,
        memory_queue_size=s.memory_queue_size,
    )
    for callback in listeners:
        sink.add_listener(callback)
    return Storage(store, buffer, sink)


async def start_sink(sink: DurableWriter, settings: Settings, mode: str) -> None:
    """Start the durable writer and log ``startup`` as its first event."""
    await sink.start()
    sink.log_event(
        "startup",
        f"bridge starting in {mode} mode",
        detail={"database": settings.database.redacted(), "buffer": str(settings.buffer_path)},
    )
