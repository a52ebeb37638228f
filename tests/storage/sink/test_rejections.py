"""Rejections are episodes, never loops; a table refusing everything is the environment.

Against the real server: CHECK constraints (added NOT VALID, so rows already there stay)
make PostgreSQL refuse chosen records with SQLSTATE 23514, exactly as bad data would.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from ibkr_bridge.core.machines.breaker import BreakerState
from ibkr_bridge.core.records import ApiEvent
from ibkr_bridge.storage.sink import MAX_CONSECUTIVE_REJECTIONS, REJECTION_EVENTS
from ibkr_bridge.testing import wait_until

from . import test_sink
from .test_sink import T0, Rig, row

rig = test_sink.rig  # the same fixture: a sink on a real database behind a proxy
memory_queue_size = test_sink.memory_queue_size  # the fixture rig depends on


async def admin(r: Rig, *statements: str) -> None:
    conn = await asyncpg.connect(r.db.server_dsn)
    try:
        for statement in statements:
            await conn.execute(statement.format(schema=f'"{r.db.schema}"'))
    finally:
        await conn.close()


def rejected_lines(r: Rig) -> list[dict[str, object]]:
    path = Path(f"{r.buffer.path}.rejected")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def listen(r: Rig) -> list[ApiEvent]:
    seen: list[ApiEvent] = []
    r.sink.add_listener(seen.append)
    return seen


async def test_a_refused_event_about_rejections_emits_nothing_more(rig: Rig) -> None:
    events = listen(rig)
    await admin(
        rig,
        "ALTER TABLE {schema}.api_logs ADD CONSTRAINT refuse CHECK "
        "(event NOT IN ('boom', 'rejected', 'rejections_ended')) NOT VALID",
    )
    boom = ApiEvent(timestamp=T0, api_mode="SOCKET", event="boom", message="x")
    await rig.sink.write([boom])
    await rig.sink.flush()  # the "rejected" event about it: refused as well
    await rig.sink.write([row(0)])  # accepted: the episode ends ...
    await rig.sink.flush()  # ... with "rejections_ended", refused too: nothing follows it
    await rig.sink.flush()
    # Before: every refused "rejected" event emitted another one, for ever.
    assert [e.event for e in events] == ["rejected", "rejections_ended"]
    kinds = [json.loads(str(line["record"]))["data"]["event"] for line in rejected_lines(rig)]
    assert kinds == ["boom", "rejected", "rejections_ended"]
    assert rig.sink.breaker.state is BreakerState.CLOSED
    assert await rig.greeks_deltas() == [0.0]


async def test_a_run_of_rejections_is_one_episode_with_a_count(rig: Rig) -> None:
    events = listen(rig)
    bad = [
        ApiEvent(timestamp=T0, api_mode="SOCKET", event="error", message=f"nul\x00{i}")
        for i in range(3)
    ]
    await rig.sink.write([row(0), *bad, row(1)])
    await rig.sink.flush()
    assert await rig.greeks_deltas() == [0.0, 1.0]
    assert len(rejected_lines(rig)) == 3
    about = [e for e in events if e.event in REJECTION_EVENTS]
    # Before: one "rejected" event per refused record, and no end of episode.
    assert [e.event for e in about] == ["rejected", "rejections_ended"]
    assert about[1].detail["rejected"] == 3
    assert rig.sink.breaker.state is BreakerState.CLOSED
    assert rig.sink.stats.rejected == 3


async def test_a_table_refusing_everything_is_the_environment(rig: Rig) -> None:
    events = listen(rig)
    await admin(
        rig,
        "ALTER TABLE {schema}.portfolio_greeks ADD CONSTRAINT refuse CHECK (false) NOT VALID",
        "ALTER TABLE {schema}.api_logs ADD CONSTRAINT refuse CHECK (false) NOT VALID",
    )
    rows = [row(i) for i in range(40)]
    for r in rows:
        await rig.sink.write([r])  # each one durable: in .rejected, then in the buffer
    for _ in range(3):  # probes while the table still refuses: nothing more is rejected
        await rig.clock.advance(60.0)
        await wait_until(
            lambda: rig.sink.breaker.state is BreakerState.OPEN and rig.clock.sleepers > 0
        )
    await rig.sink.flush()
    # Before: 40 rejected rows and an endless stream of events about refused events.
    assert len(rejected_lines(rig)) == MAX_CONSECUTIVE_REJECTIONS
    assert [e.event for e in events if e.event in REJECTION_EVENTS] == ["rejected"]
    assert rig.sink.breaker.state is BreakerState.OPEN
    assert not rig.buffer.is_empty

    await admin(
        rig,
        "ALTER TABLE {schema}.portfolio_greeks DROP CONSTRAINT refuse",
        "ALTER TABLE {schema}.api_logs DROP CONSTRAINT refuse",
    )
    await rig.clock.advance(60.0)
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED)
    await rig.sink.flush()
    # Every row exactly once, in order, the rejected ones included (queued again).
    assert await rig.greeks_deltas() == [r.delta for r in rows]
    assert len(rejected_lines(rig)) == MAX_CONSECUTIVE_REJECTIONS
    logged = await rig.db.fetch(
        "SELECT event, detail FROM api_logs WHERE event = ANY($1::text[]) ORDER BY id",
        sorted(REJECTION_EVENTS),
    )
    assert [g["event"] for g in logged] == ["rejected", "rejections_ended"]
    ended = json.loads(logged[1]["detail"])
    assert ended["rejected"] == MAX_CONSECUTIVE_REJECTIONS
    assert ended["requeued"] == MAX_CONSECUTIVE_REJECTIONS
    keys = await rig.db.fetch("SELECT bridge_key FROM api_logs")
    assert len(keys) == len({k["bridge_key"] for k in keys})
    assert {e.key for e in events} <= {k["bridge_key"] for k in keys}


async def test_the_limit_counts_only_refusals_in_a_row(rig: Rig) -> None:
    await admin(
        rig,
        "ALTER TABLE {schema}.portfolio_greeks ADD CONSTRAINT odd CHECK (delta::int % 2 = 0)"
        " NOT VALID",
    )
    rows = [row(i) for i in range(4 * MAX_CONSECUTIVE_REJECTIONS)]
    for r in rows:  # every other row is bad data: never a run longer than one
        await rig.sink.write([r])
    await rig.sink.flush()
    assert rig.sink.breaker.state is BreakerState.CLOSED
    assert len(rejected_lines(rig)) == len(rows) // 2
    # row(i) always sets delta=float(i); mypy only knows GreeksRow.delta as float | None.
    assert await rig.greeks_deltas() == [r.delta for r in rows if int(r.delta) % 2 == 0]  # type: ignore[arg-type]


async def test_a_burst_of_bad_data_longer_than_the_limit_does_not_block(rig: Rig) -> None:
    events = listen(rig)
    burst = [
        ApiEvent(timestamp=T0, api_mode="SOCKET", event="error", message=f"nul\x00{i}")
        for i in range(2 * MAX_CONSECUTIVE_REJECTIONS)
    ]
    await rig.sink.write([row(0)])
    for e in burst:
        await rig.sink.write([e])
    await rig.sink.write([row(1)])
    # The limit is passed: first the records wait, as for a table refusing everything ...
    assert rig.sink.breaker.state is BreakerState.OPEN
    await rig.clock.advance(60.0)
    # ... then the probe finds the tables take a well-formed record: it was bad data.
    await wait_until(lambda: rig.sink.breaker.state is BreakerState.CLOSED)
    await rig.sink.flush()
    assert await rig.greeks_deltas() == [0.0, 1.0]
    lines = rejected_lines(rig)
    keys = [json.loads(str(line["record"]))["key"] for line in lines]
    assert keys == [e.key for e in burst]  # each once, although some were queued again
    assert rig.sink.stats.rejected == len(burst)
    about = [e for e in events if e.event in REJECTION_EVENTS]
    assert [e.event for e in about] == ["rejected", "rejections_ended"]
    assert about[1].detail["rejected"] == len(burst)
    probe = await rig.db.fetch("SELECT 1 FROM api_logs WHERE event = 'probe'")
    assert probe == []  # the trial records were rolled back
