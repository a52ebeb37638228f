"""Partition upkeep for ``position_greeks``: make the days ahead, drop those past retention.

Runs beside the lifecycle while BRIDGE_POSITION_ROWS is on, once at start and then every
hour on the bridge's clock (so a fake clock drives 40 days in a test). What to create and
drop is the pure rule :func:`ibkr_bridge.core.partitions.plan`; what was dropped is an
``api_logs`` event. A database that cannot be reached is the breaker's business: upkeep
says so once per episode, then tries again at the next hour (rows never wait on it: the
partitions are made days ahead, and the schema probe makes a missing one).
"""

from __future__ import annotations

import logging
from typing import Final

from ibkr_bridge.core.clock import Clock
from ibkr_bridge.core.errors import StoreError
from ibkr_bridge.core.partitions import partition_name
from ibkr_bridge.storage.positions import POSITION_TABLE
from ibkr_bridge.storage.sink import DurableWriter
from ibkr_bridge.storage.store import Store

log = logging.getLogger(__name__)

UPKEEP_INTERVAL: Final = 3600.0


async def keep_partitions(
    store: Store, sink: DurableWriter, clock: Clock, *, every: float = UPKEEP_INTERVAL
) -> None:
    """Forever: upkeep, then sleep ``every`` seconds; cancel it to stop."""
    failing: str | None = None
    while True:
        try:
            done = await store.maintain_partitions()
        except StoreError as exc:
            if failing is None:
                failing = str(exc)
                log.warning("position_greeks partition upkeep failed: %s", exc)
                sink.log_event(
                    "partition_upkeep_failed",
                    f"position_greeks partitions could not be kept: {exc} (tried again "
                    "every hour; reported again only once it works)",
                    status="warning",
                    detail={"error": failing},
                )
        else:
            failing = None
            if done is not None and done.drop:
                days = [d.isoformat() for d in done.drop]
                names = [partition_name(POSITION_TABLE, d) for d in done.drop]
                retention = store.positions.retention_days if store.positions else None
                sink.log_event(
                    "partitions_dropped",
                    f"dropped {len(days)} position_greeks day partition(s) older than "
                    f"{retention} days (BRIDGE_RETENTION_DAYS): {', '.join(names)}",
                    detail={"partitions": names, "days": days, "retention_days": retention},
                )
        await clock.sleep(every)
