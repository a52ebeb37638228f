"""The pure health rules: evaluate() on plain status records, no server, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs

from ibkr_bridge.core.health import HealthEpisodes, HealthPolicy, HealthReport, evaluate
from ibkr_bridge.core.resetwindow import WatchdogPolicy
from ibkr_bridge.service.status import BridgeStatus

POLICY = HealthPolicy(
    max_row_age=15.0, first_row_grace=60.0, stale_grace=120.0, outage_grace=50.0,
    db_outage_grace=10.0,
)  # fmt: skip
NOON = datetime(2026, 1, 6, 17, 0, tzinfo=UTC)  # Tuesday noon in New York: no window
STATUS = BridgeStatus(
    mode="socket", connection="LIVE", breaker="CLOSED", stale=False, account="U1",
    last_row_at=None, last_rows=(), rows_submitted=0, ticks_missed=0, ticks_skipped=0,
    buffer_pending_bytes=0,
)  # fmt: skip


@attrs.frozen
class Buffer:
    buffer_error: str | None = None
    memory_queue_depth: int = 0
    memory_queue_size: int = 100


def judge(
    status: BridgeStatus, episodes: HealthEpisodes, now: float, *, buffer: Buffer | None = None
) -> HealthReport:
    return evaluate(
        status,
        episodes,
        now=now,
        wall=NOON,
        policy=POLICY,
        watchdog=WatchdogPolicy(),
        buffer_max_bytes=1000,
        buffer=buffer if buffer is not None else Buffer(),
    )


def test_live_with_a_recent_row_is_ok() -> None:
    e = HealthEpisodes(0.0)
    e.last_row_at = 95.0
    report = judge(STATUS, e, 100.0)
    assert report.status == "ok"
    assert report.last_row_age_seconds == 5.0


def test_live_without_rows_past_the_first_row_grace() -> None:
    report = judge(STATUS, HealthEpisodes(0.0), 61.0)
    assert report.reason == "connected for 61 s but no row written (limit 60 s)"


def test_an_outage_is_healthy_until_its_grace_ends() -> None:
    down = attrs.evolve(STATUS, connection="BACKOFF")
    assert judge(down, HealthEpisodes(0.0), 50.0).note == "reconnecting to IBKR (state BACKOFF)"
    late = judge(down, HealthEpisodes(0.0), 51.0)
    assert late.reason == "not connected to IBKR for 51 s (limit 50 s; state BACKOFF)"


def test_database_and_buffer_reasons_join() -> None:
    e = HealthEpisodes(0.0)
    e.last_row_at = 99.0
    status = attrs.evolve(STATUS, breaker="OPEN", buffer_pending_bytes=950)
    report = judge(status, e, 100.0, buffer=Buffer(buffer_error="ENOSPC"))
    assert not report.healthy
    assert report.reason is not None
    parts = report.reason.split("; ")
    assert parts[0] == "database unreachable for 100 s (limit 10 s"
    assert "the buffer is 95% full (950 of 1000 bytes): new rows will be refused" in parts
    assert any(p.startswith("the buffer is failing (ENOSPC)") for p in parts)


def test_rows_from_before_watching_are_aged_on_the_wall_clock() -> None:
    status = attrs.evolve(STATUS, last_row_at=NOON - timedelta(seconds=7))
    assert judge(status, HealthEpisodes(0.0), 1.0).last_row_age_seconds == 7.0


def test_stopped_is_unhealthy_whatever_else() -> None:
    report = judge(attrs.evolve(STATUS, connection="STOPPED"), HealthEpisodes(0.0), 0.0)
    assert report.reason == "the bridge is stopped"
