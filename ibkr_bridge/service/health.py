"""Health and metrics over HTTP: ``GET /healthz`` and ``GET /metrics`` for one Bridge.

:class:`HealthServer` is a small aiohttp server (loopback by default) that watches a Bridge
(any :class:`~ibkr_bridge.service.status.BridgeView`) through its observation hooks (every
``api_logs`` event, every tick, every batch of rows) and its read-only ``status``:

- ``/healthz`` answers 200 while the bridge is writing rows, or is in a wait it expects
  (IBKR's nightly reset, a short reconnection, a short database outage), and 503 with a
  ``reason`` otherwise. The rules and their thresholds are :class:`HealthPolicy`; see
  ``docs/operations-metrics.md``.
- ``/metrics`` is the Prometheus text format, from a private ``CollectorRegistry`` so two
  bridges in one process never clash. Totals the bridge already counts (sink statistics,
  rows, ticks) are read at scrape time by a custom collector, so they are never out of
  step with ``Bridge.status`` and ``DurableWriter.stats``.

Ages are measured on the injectable clock's monotonic time, so a wall-clock jump never
makes a row look older or younger than it is; pass the bridge's own clock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.core.errors import LifecycleError
from ibkr_bridge.core.machines import BREAKER_SPEC, CONNECTION_SPEC, BreakerState
from ibkr_bridge.core.records import ApiEvent, GreeksRow
from ibkr_bridge.core.resetwindow import WatchdogPolicy, in_maintenance, in_weekly_window
from ibkr_bridge.service.status import BridgeStatus, BridgeView, TickInfo

if TYPE_CHECKING:
    pass
from ibkr_bridge.service._health_rules import _S, HealthPolicy, HealthReport, _seconds, _Tracker
from ibkr_bridge.service._metrics import PREFIX, TICK_BUCKETS, _BridgeCollector, _sink_stats

__all__ = ["HealthPolicy", "HealthReport", "HealthServer"]

log = logging.getLogger(__name__)


class HealthServer:
    """``/healthz`` and ``/metrics`` for one bridge, on ``host:port`` (port 0 = any free one).

    Construct it before or after ``bridge.start()``: it subscribes to the bridge's hooks
    at once, and only binds the socket in :meth:`start`.
    """

    def __init__(
        self,
        bridge: BridgeView,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        policy: HealthPolicy | None = None,
    ) -> None:
        self.bridge = bridge
        self.host = host
        self._requested_port = port
        self._clock: Clock = clock or SystemClock()
        self.policy = policy or HealthPolicy.from_settings(bridge.settings)
        self._watchdog = WatchdogPolicy(**bridge.settings.watchdog_kwargs())
        self._tracker = _Tracker(self._clock.monotonic())
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

        self.registry = CollectorRegistry()
        self._transitions = Counter(
            "transitions",
            "Lifecycle state machine transitions (LIVE->LIVE: IB 1100/1101/1102)",
            labelnames=("machine", "from", "to"),
            namespace=PREFIX,
            registry=self.registry,
        )
        for spec in (CONNECTION_SPEC, BREAKER_SPEC):
            for rule in spec.rules:
                # Every possible series starts at 0, so rate() sees the first one.
                dest = rule.dest if rule.dest is not None else rule.source
                self._transitions.labels(spec.name, rule.source.value, dest.value)
        self._connect_attempts = Counter(
            "connect_attempts",
            "Connection attempts to IBKR",
            namespace=PREFIX,
            registry=self.registry,
        )
        self._connect_failures = Counter(
            "connect_failures",
            "Connection attempts to IBKR that failed",
            namespace=PREFIX,
            registry=self.registry,
        )
        self._tick_duration = Histogram(
            "tick_duration_seconds",
            "Seconds one writer tick spent aggregating and handing rows over",
            namespace=PREFIX,
            buckets=TICK_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_BridgeCollector(self))

        bridge.add_event_callback(self._on_event)
        bridge.add_tick_callback(self._on_tick)
        bridge.add_row_callback(self._on_rows)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; raises OSError when the port is taken."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/healthz", self._handle_healthz)
        app.router.add_get("/metrics", self._handle_metrics)
        # No access log: a scraper every few seconds would drown the service log.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        log.info("health and metrics on http://%s:%d/healthz and /metrics", self.host, self._port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._port is None:
            raise LifecycleError("the health server has not started")
        return self._port

    # -- the bridge's hooks -----------------------------------------------------------

    def _on_event(self, event: ApiEvent) -> None:
        if (
            event.event == "transition"
            and event.machine
            and event.source_state
            and event.dest_state
        ):
            self._transitions.labels(event.machine, event.source_state, event.dest_state).inc()
            self._tracker.transition(event, self._clock.monotonic())
        elif event.event == "connect" and "outcome" not in event.detail:
            self._connect_attempts.inc()
        elif event.event == "error" and event.detail.get("outcome") == "failed":
            self._connect_failures.inc()

    def _on_tick(self, info: TickInfo) -> None:
        self._tick_duration.observe(info.duration)

    def _on_rows(self, rows: Sequence[GreeksRow]) -> None:
        if rows:
            self._tracker.last_row_at = self._clock.monotonic()

    # -- health -------------------------------------------------------------------------

    def health(self, status: BridgeStatus | None = None) -> HealthReport:
        """Evaluate the rules of ``docs/operations-metrics.md`` now."""
        status = status or self.bridge.status
        policy, t = self.policy, self._tracker
        now = self._clock.monotonic()
        reasons: list[str] = []
        note: str | None = None
        age = self._row_age(status, now)

        state = status.connection
        if state == _S.STOPPED:
            reasons.append("the bridge is stopped")
        elif state == _S.RESET_WAIT:
            note = "waiting out IBKR's nightly reset or weekly maintenance"
        elif state == _S.LIVE and status.stale:
            stale_for = now - (t.stale_since if t.stale_since is not None else t.started_at)
            wall = self._clock.now()
            if in_maintenance(wall, self._watchdog):
                which = (
                    "weekly maintenance"
                    if in_weekly_window(wall, self._watchdog)
                    else "nightly reset"
                )
                note = f"IB reports lost connectivity (1100) during the {which} window"
            elif stale_for > policy.stale_grace:
                reasons.append(
                    f"IB has reported lost connectivity (1100) for {_seconds(stale_for)} "
                    f"(limit {_seconds(policy.stale_grace)}): no rows are written"
                )
            else:
                note = f"IB reports lost connectivity (1100) for {_seconds(stale_for)}"
        elif state == _S.LIVE:
            if t.last_row_at is not None and t.last_row_at >= t.writing_expected_since:
                since_row = now - t.last_row_at
                if since_row > policy.max_row_age:
                    reasons.append(
                        f"no row written for {_seconds(since_row)} "
                        f"(limit {_seconds(policy.max_row_age)})"
                    )
            else:
                waited = now - t.writing_expected_since
                if waited > policy.first_row_grace:
                    reasons.append(
                        f"connected for {_seconds(waited)} but no row written "
                        f"(limit {_seconds(policy.first_row_grace)})"
                    )
                else:
                    note = "connected; waiting for complete market data"
        else:
            down_for = now - (t.down_since if t.down_since is not None else t.started_at)
            if down_for > policy.outage_grace:
                reasons.append(
                    f"not connected to IBKR for {_seconds(down_for)} "
                    f"(limit {_seconds(policy.outage_grace)}; state {state})"
                )
            else:
                note = f"reconnecting to IBKR (state {state})"

        if status.breaker != BreakerState.CLOSED:
            since = t.db_down_since if t.db_down_since is not None else t.started_at
            db_for = now - since
            if db_for > policy.db_outage_grace:
                reasons.append(
                    f"database unreachable for {_seconds(db_for)} "
                    f"(limit {_seconds(policy.db_outage_grace)}; breaker {status.breaker}); "
                    "rows are kept in the buffer"
                )
            elif note is None:
                note = f"database unreachable (breaker {status.breaker}); rows are buffered"

        if reasons and status.degraded:
            # The rows stopped or are partial because of these legs: say which.
            reasons.append(status.degraded)

        cap = self.bridge.settings.buffer_max_bytes
        if status.buffer_pending_bytes >= policy.buffer_full_ratio * cap:
            reasons.append(
                f"the buffer is {100 * status.buffer_pending_bytes / cap:.0f}% full "
                f"({status.buffer_pending_bytes} of {cap} bytes): new rows will be refused"
            )

        stats = _sink_stats(self.bridge)
        if stats is not None and stats.buffer_error is not None:
            reasons.append(
                f"the buffer is failing ({stats.buffer_error}): {stats.memory_queue_depth} "
                f"records wait in memory (at most {stats.memory_queue_size}), more are "
                "refused; rows still reach the database while it is reachable"
            )

        return HealthReport(
            healthy=not reasons,
            reason="; ".join(reasons) if reasons else None,
            note=None if reasons else note,
            mode=status.mode,
            connection=str(state),
            breaker=str(status.breaker),
            # IB's 1100, or some option leg's Greeks too old / a market-data farm broken.
            stale=status.stale or status.greeks_stale,
            last_row_at=status.last_row_at,
            last_row_age_seconds=age,
            buffer_pending_bytes=status.buffer_pending_bytes,
            rows_submitted=status.rows_submitted,
            degraded=status.degraded,
            legs_missing=status.legs_missing,
        )

    def _row_age(self, status: BridgeStatus, now: float) -> float | None:
        if self._tracker.last_row_at is not None:
            return now - self._tracker.last_row_at
        if status.last_row_at is not None:
            # Rows written before this server was attached: only the wall clock knows.
            return (self._clock.now() - status.last_row_at).total_seconds()
        return None

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of this bridge's metrics."""
        return generate_latest(self.registry)

    # -- HTTP -------------------------------------------------------------------------

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        report = self.health()
        return web.Response(
            status=200 if report.healthy else 503,
            text=json.dumps(report.to_json()),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics_text(),
            headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, "Cache-Control": "no-store"},
        )
