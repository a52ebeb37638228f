"""Health and metrics over HTTP: ``GET /healthz`` and ``GET /metrics`` for one Bridge.

:class:`HealthServer` is a small aiohttp server (loopback by default) that watches a Bridge
(any :class:`~ibkr_bridge.service.status.BridgeView`) through its observation hooks (every
``api_logs`` event, every tick, every batch of rows) and its read-only ``status``:

- ``/healthz`` answers 200 while the bridge is writing rows, or is in a wait it expects
  (IBKR's nightly reset, a short reconnection, a short database outage), and 503 with a
  ``reason`` otherwise. The rules are the pure :func:`ibkr_bridge.core.health.evaluate`
  and their thresholds :class:`HealthPolicy`; see ``docs/operations-metrics.md``. This
  server only keeps the episodes from the bridge's events and renders the verdict.
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

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.core.errors import LifecycleError
from ibkr_bridge.core.health import HealthEpisodes, HealthPolicy, HealthReport, evaluate
from ibkr_bridge.core.machines import BREAKER_SPEC, CONNECTION_SPEC
from ibkr_bridge.core.records import ApiEvent, GreeksRow
from ibkr_bridge.core.resetwindow import WatchdogPolicy
from ibkr_bridge.service._metrics import PREFIX, TICK_BUCKETS, _BridgeCollector, _sink_stats
from ibkr_bridge.service.status import BridgeStatus, BridgeView, TickInfo

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
        self._tracker = HealthEpisodes(self._clock.monotonic())
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
        """Evaluate the rules of ``docs/operations-metrics.md`` now (:func:`evaluate`)."""
        stats = _sink_stats(self.bridge)
        return evaluate(
            status or self.bridge.status,
            self._tracker,
            now=self._clock.monotonic(),
            wall=self._clock.now(),
            policy=self.policy,
            watchdog=self._watchdog,
            buffer_max_bytes=self.bridge.settings.buffer_max_bytes,
            buffer=stats,
        )

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
