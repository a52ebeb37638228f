"""Fault-matrix rows of the h3 slice: a wall clock stepping back; rejected rows replayed.

- ``clock-wall-steps-back``: NTP steps the wall clock back by exactly one poll interval (the
  next row's time equals an earlier row's, and so would its idempotency key) and later by
  12 s. The invariants (nothing lost, ``(contract, timestamp)`` unique, each contract's rows
  in timestamp order) hold, and each step is one ``clock_step`` event.
- ``db-rejects-rows-then-replayed``: an operator adds a constraint every new row violates;
  rows are refused as data into ``.rejected``. The constraint is dropped and
  ``ibkr-bridge buffer replay-rejected --apply`` runs (a real subprocess) while the bridge
  keeps running: every submitted row ends up in the table exactly once.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from ibkr_bridge.storage.drain import RejectedFile
from ibkr_bridge.testing import TestDatabase

from .harness import POLL, Case, World, assert_report, run_case

ROOT = Path(__file__).resolve().parents[2]


async def wall_clock_steps_back(w: World) -> None:
    await w.data_ready()
    await w.ticks(3)
    w.clock.set_wall(w.clock.now() - timedelta(seconds=POLL))
    await w.ticks(3)
    w.clock.set_wall(w.clock.now() - timedelta(seconds=12))
    await w.ticks(4)


async def one_clock_step_event_per_step(w: World) -> None:
    steps = [e for e in w.events if e.event == "clock_step"]
    assert len(steps) == 2, [e.message for e in steps]
    found = await w.db.fetch("SELECT 1 FROM api_logs WHERE event = 'clock_step'")
    assert len(found) == 2


async def rows_rejected_then_replayed(w: World) -> None:
    await w.data_ready()
    await w.ticks(1)
    conn = await w.db.connect()
    try:
        # NOT VALID: rows already there are not checked, every new one is refused (23514).
        await conn.execute(
            "ALTER TABLE portfolio_greeks ADD CONSTRAINT h3_no_rows CHECK (legs < 0) NOT VALID"
        )
        await w.ticks(3)
        await w.live_bridge.sink.flush()
        rejected = RejectedFile(w.buffer_path).summary()
        assert rejected.records > 0, "no row was rejected: the case proved nothing"
        assert "h3_no_rows" in (rejected.oldest_error or "")
        await conn.execute("ALTER TABLE portfolio_greeks DROP CONSTRAINT h3_no_rows")
    finally:
        await conn.close()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    env.update(w.env, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ibkr_bridge",
        "--env-file",
        str(w.buffer_path.parent / "none.env"),
        "buffer",
        "replay-rejected",
        "--apply",
        env=env,
        cwd=w.buffer_path.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out.decode(), err.decode())
    assert b"removed, nothing left to replay" in out, out.decode()


CASES = [
    Case(
        "clock-wall-steps-back",
        wall_clock_steps_back,
        verify=one_clock_step_event_per_step,
        note="steps of 5 s and 12 s: rows stamped 1 us apart until the wall clock catches up",
    ),
    Case(
        "portal-clock-wall-steps-back",
        wall_clock_steps_back,
        mode="PORTAL",
        verify=one_clock_step_event_per_step,
        note="the same in PORTAL mode (freshness is judged at the row's time)",
    ),
    Case(
        "db-rejects-rows-then-replayed",
        rows_rejected_then_replayed,
        note="`buffer replay-rejected --apply` next to the running bridge; .rejected removed",
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
async def test_h3_fault(case: Case, db: TestDatabase, tmp_path: Path) -> None:
    assert_report(await run_case(case, db, tmp_path))
