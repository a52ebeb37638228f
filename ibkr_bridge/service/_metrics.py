"""The /metrics families read at scrape time from the bridge's own counters and state."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Final, Protocol

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ibkr_bridge.core._version import __version__
from ibkr_bridge.core.errors import LifecycleError
from ibkr_bridge.core.health import HealthReport
from ibkr_bridge.core.machines import BreakerState, ConnectionState
from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.service.status import BridgeStatus, BridgeView
from ibkr_bridge.storage.sink import SinkStats

log = logging.getLogger(__name__)


PREFIX: Final = "ibkr_bridge"
GREEKS: Final = ("delta", "gamma", "vega", "theta", "dollar_delta")
# Ticks aggregate in-memory state: microseconds normally, so the buckets start low.
TICK_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0)


class _Source(Protocol):
    """What the collector reads: the bridge and its health verdict (a HealthServer)."""

    @property
    def bridge(self) -> BridgeView: ...

    def health(self, status: BridgeStatus | None = None) -> HealthReport: ...


class _BridgeCollector(Collector):
    """Reads the bridge's own counters and state at scrape time."""

    def __init__(self, server: _Source) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        bridge = server.bridge
        status = bridge.status
        report = server.health(status)
        yield InfoMetricFamily(
            PREFIX,
            "The bridge's mode and version",
            value={"mode": status.mode, "version": __version__},
        )
        yield _gauge("healthy", "1 when /healthz answers 200", 1.0 if report.healthy else 0.0)
        states = GaugeMetricFamily(
            f"{PREFIX}_state",
            "Current state of each lifecycle machine (1 for the current state)",
            labels=["machine", "state"],
        )
        for machine, enum, current in (
            ("connection", ConnectionState, status.connection),
            ("breaker", BreakerState, status.breaker),
        ):
            for member in enum:
                states.add_metric([machine, member.value], 1.0 if member.value == current else 0.0)
        yield states
        yield _gauge("stale", "1 while IB reports lost connectivity (1100)", float(status.stale))

        yield _counter("rows_submitted", "Greeks rows handed to the writer", status.rows_submitted)
        yield _counter(
            "positions_submitted",
            "position_greeks rows handed to the writer (BRIDGE_POSITION_ROWS)",
            status.positions_submitted,
        )
        yield _counter("ticks_skipped", "Writer ticks that wrote nothing", status.ticks_skipped)
        yield _counter("ticks_missed", "Writer ticks not run on time", status.ticks_missed)
        stats = _sink_stats(bridge)
        if stats is not None:
            for name, value, documentation in (
                ("records_written", stats.written, "Records written straight to PostgreSQL"),
                ("records_buffered", stats.buffered, "Records appended to the buffer"),
                ("records_drained", stats.drained, "Buffered records copied to PostgreSQL"),
                ("records_rejected", stats.rejected, "Records PostgreSQL refused as data"),
                (
                    "records_refused",
                    stats.refused_full,
                    "Records refused: neither the buffer nor the memory queue could hold them",
                ),
                (
                    "records_memory_queued",
                    stats.memory_queued,
                    "Records that waited in memory: the buffer could not be appended to",
                ),
                ("buffer_quarantined_lines", stats.quarantined, "Unreadable buffer lines"),
            ):
                yield _counter(name, documentation, value)
            yield _gauge(
                "memory_queue_depth", "Records waiting in memory now", stats.memory_queue_depth
            )
        yield _gauge(
            "buffer_pending_bytes",
            "Bytes in the buffer not yet in PostgreSQL",
            status.buffer_pending_bytes,
        )
        yield _gauge(
            "buffer_max_bytes", "Size cap of the buffer", float(bridge.settings.buffer_max_bytes)
        )
        if report.last_row_age_seconds is not None:
            yield _gauge(
                "last_row_age_seconds",
                "Seconds since the last row was written",
                report.last_row_age_seconds,
            )
        if status.last_row_at is not None:
            yield _gauge(
                "last_row_timestamp_seconds",
                "Unix time of the last row written",
                status.last_row_at.timestamp(),
            )
        yield from _greeks(status.last_rows)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=float(value))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=float(value))


def _sink_stats(bridge: BridgeView) -> SinkStats | None:
    try:
        return bridge.sink.stats
    except LifecycleError:  # not started: there is no writer to report on yet
        return None


def _greeks(rows: Sequence[GreeksRow]) -> Iterator[GaugeMetricFamily]:
    for greek in GREEKS:
        family = GaugeMetricFamily(
            f"{PREFIX}_net_{greek}",
            f"Net {greek} of the last row written, per contract (PORTFOLIO or an underlying)",
            labels=["contract"],
        )
        for row in rows:
            value = getattr(row, greek)
            if value is not None:  # a Greek IB did not send is absent, never 0
                family.add_metric([row.contract], value)
        yield family
