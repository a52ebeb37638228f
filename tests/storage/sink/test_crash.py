"""kill -9 the writer at random instants, under random database outages; count the rows.

Invariants: every acknowledged row is in ``portfolio_greeks`` exactly once, rows appear in
the order they were written, and nothing but written rows appears.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from ibkr_bridge.testing import TcpProxy, TestDatabase

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parents[3]


async def _spawn(dsn: str, buffer: Path, first: int, last: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        dsn,
        str(buffer),
        str(first),
        str(last),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )


async def _read_acks(proc: asyncio.subprocess.Process, acks: list[int]) -> None:
    assert proc.stdout is not None
    async for line in proc.stdout:
        text = line.decode().strip()
        if text.startswith("ack "):
            acks.append(int(text[4:]))


async def _chaos(proxy: TcpProxy, rng: random.Random, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        choice = rng.random()
        if choice < 0.5:
            proxy.up()
        elif choice < 0.7:
            proxy.down()
        elif choice < 0.85:
            proxy.cut()
        else:
            proxy.blackhole()
    proxy.up()


@pytest.mark.slow
async def test_kill_9_at_random_instants_loses_and_duplicates_nothing(
    db: TestDatabase, tmp_path: Path
) -> None:
    rng = random.Random(20261124)
    buffer = tmp_path / "buffer.jsonl"
    acks: list[int] = []
    kills = 0
    async with TcpProxy(*db.server_address()) as proxy:
        dsn = db.proxied_dsn(proxy)
        stop_chaos = asyncio.Event()
        chaos = asyncio.create_task(_chaos(proxy, rng, stop_chaos))
        next_row = 0
        try:
            for _ in range(40):
                proc = await _spawn(dsn, buffer, next_row, next_row + 10_000)
                reader = asyncio.create_task(_read_acks(proc, acks))
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                await reader
                kills += 1
                # Resume after the last acknowledged row; rows written but not acknowledged
                # before the kill are submitted again and must not be doubled.
                next_row = (max(acks) + 1) if acks else 0
        finally:
            stop_chaos.set()
            await chaos
        proxy.up()
        final = await _spawn(dsn, buffer, 1, 0)
        try:
            out, _ = await asyncio.wait_for(final.communicate(), timeout=120)
        finally:
            # A hung drain fails this test alone: the child must not outlive it.
            if final.returncode is None:
                final.kill()
                await final.wait()
        assert b"drained" in out

    rows = await db.fetch("SELECT bridge_key, delta FROM portfolio_greeks ORDER BY id")
    deltas = [int(r["delta"]) for r in rows]
    assert kills == 40
    assert len(acks) > 100, "the test did too little work to mean anything"
    assert set(acks) <= set(deltas), f"lost: {sorted(set(acks) - set(deltas))[:10]}"
    assert len(deltas) == len(set(deltas)), "duplicated rows"
    assert deltas == sorted(deltas), "rows out of order"
    assert all(r["bridge_key"] == f"row-{int(r['delta'])}" for r in rows)
    assert max(deltas) <= max(acks) + 1  # nothing that was never written
