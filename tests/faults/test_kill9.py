"""kill -9 a real Bridge at 100 random instants while the database flaps; count the rows.

A fork server (``bridge_child.py``) runs each Bridge in its own process against the IB
Gateway simulator in *this* process (so the gateway survives the kills) and the real
PostgreSQL through a :class:`TcpProxy` that this test keeps flapping (up, down, cut,
black-holed). Clocks are real and the poll interval is 0.2 s. Each child is killed with
SIGKILL after a random 0.2-1.5 s and the next one starts on the same buffer; finally a
child runs until the buffer is drained and stops cleanly.

Invariants: every row a child acknowledged as durable is in ``portfolio_greeks``; no
duplicate ``bridge_key`` and no two rows with the same ``(contract, timestamp)``; per
contract the rows were stored in timestamp order; no row that is not data; the buffer is
empty at the end and the quarantine holds only lines torn by a kill in mid-append.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge.sim import TwsSimulator, default_portfolio
from ibkr_bridge.testing import TcpProxy, TestDatabase

from .harness import ACCOUNT, NY, Outcome, leg_problems, record

CHILD = Path(__file__).with_name("bridge_child.py")
ROOT = Path(__file__).resolve().parents[2]
KILLS = 100
CASE = f"kill-9 x{KILLS} (real clocks, database flapping)"


def child_env(sim_port: int, dsn: str, buffer: Path) -> dict[str, str]:
    # The nightly reset window is put half a day away so that no retry waits for it.
    start = datetime.now(NY) + timedelta(hours=12)
    end = start + timedelta(minutes=1)
    resume = start + timedelta(minutes=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "IBKR_", "BRIDGE_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "IB_SOCKET_PORT": str(sim_port),
            "IB_ACCOUNT": ACCOUNT,
            "IB_CONNECT_TIMEOUT": "3",
            "IB_PROBE_INTERVAL": "2",
            "IB_PROBE_TIMEOUT": "1",
            "DATABASE_URL": dsn,
            "BRIDGE_BUFFER_PATH": str(buffer),
            "BRIDGE_POLL_INTERVAL": "0.2",
            "BRIDGE_RETRY_INTERVAL": "0.3",
            "BRIDGE_DB_CONNECT_TIMEOUT": "0.5",
            "BRIDGE_DB_COMMAND_TIMEOUT": "0.5",
            "BRIDGE_BACKOFF": "0.1,0.2,0.4",
            "BRIDGE_STEADY_RETRY": "0.5",
            "BRIDGE_RESET_WINDOW": f"{start:%H:%M}-{end:%H:%M}",
            "BRIDGE_RESET_RESUME": f"{resume:%H:%M}",
            "BRIDGE_WEEKLY_WINDOW": "off",  # real clocks: a Friday-night run must not wait
            "BRIDGE_LOG_LEVEL": "WARNING",
            # position_greeks rides along: each tick's legs in its net row's transaction.
            "BRIDGE_POSITION_ROWS": "true",
        }
    )
    return env


class ForkServer:
    """The child process that forks bridges on request, and what they printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.acks: dict[str, tuple[str, str]] = {}  # bridge_key -> (contract, timestamp)
        self.nacks: list[str] = []
        self.drained: int | None = None
        self._pids: asyncio.Queue[int] = asyncio.Queue()
        self._drained = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, env: dict[str, str], log: Path) -> ForkServer:
        with log.open("ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(CHILD),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            word, _, rest = raw.decode().strip().partition(" ")
            if word == "pid":
                self._pids.put_nowait(int(rest))
            elif word == "ack":
                _, key, contract, stamp = rest.split(" ")
                self.acks[key] = (contract, stamp)
            elif word == "nack":
                self.nacks.append(rest)
            elif word == "drained":
                self.drained = int(rest.split(" ")[1])
                self._drained.set()

    async def spawn(self, mode: str) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{mode}\n".encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(self._pids.get(), timeout=10)

    async def wait_drained(self, timeout: float) -> None:
        await asyncio.wait_for(self._drained.wait(), timeout=timeout)

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout=10)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self._reader


async def kill_9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    # The fork server lets the kernel reap its children: gone means its files are closed
    # (the buffer's lock released) before the next one starts.
    for _ in range(1000):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"child {pid} survived SIGKILL")


async def flap(proxy: TcpProxy, rng: random.Random, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.1, 0.6))
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


def read_quarantine(buffer: Path) -> list[dict[str, Any]]:
    path = Path(f"{buffer}.quarantine")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def leftovers(buffer: Path) -> list[str]:
    return [p.name for p in (buffer, Path(f"{buffer}.cursor")) if p.exists()]


@pytest.mark.slow
async def test_kill_9_at_random_instants(db: TestDatabase, tmp_path: Path) -> None:
    rng = random.Random(20261124)
    buffer = tmp_path / "buffer" / "buffer.jsonl"
    try:
        async with (
            TcpProxy(*db.server_address()) as proxy,
            TwsSimulator(default_portfolio(), tick_interval=0.5) as sim,
        ):
            env = child_env(sim.port, db.proxied_dsn(proxy), buffer)
            server = await ForkServer.start(env, tmp_path / "children.log")
            stop_flapping = asyncio.Event()
            flapping = asyncio.create_task(flap(proxy, rng, stop_flapping))
            try:
                for _ in range(KILLS):
                    pid = await server.spawn("run")
                    await asyncio.sleep(rng.uniform(0.2, 1.5))
                    await kill_9(pid)
                acked_before_final = len(server.acks)
                stop_flapping.set()
                await flapping
                await server.spawn("final")
                await server.wait_drained(timeout=120)
            finally:
                stop_flapping.set()
                await flapping
                await server.close()
        rows = await db.fetch("SELECT * FROM portfolio_greeks ORDER BY id")
        rows += await db.fetch("SELECT * FROM underlying_greeks ORDER BY id")
        logs = await db.fetch("SELECT bridge_key FROM api_logs")
        legs = await db.fetch("SELECT * FROM position_greeks")
        held = len(sim.portfolio.positions(ACCOUNT))
        quarantined = read_quarantine(buffer)
        left = leftovers(buffer)
    except BaseException as exc:
        record(Outcome(CASE, f"FAILED: {type(exc).__name__}: {exc}"))
        raise

    keys = [r["bridge_key"] for r in rows]
    stored = set(keys)
    lost = sorted(set(server.acks) - stored)
    slots = Counter((r["contract"], r["timestamp"]) for r in rows)
    duplicated = (len(keys) - len(stored)) + sum(n - 1 for n in slots.values())
    problems: list[str] = []
    if lost:
        problems.append(f"{len(lost)} acknowledged rows lost, e.g. {server.acks[lost[0]]}")
    if duplicated:
        problems.append(f"{duplicated} duplicated rows")
    if len(logs) != len({r["bridge_key"] for r in logs}):
        problems.append("duplicated api_logs rows")
    for contract in {r["contract"] for r in rows}:
        stamps = [r["timestamp"] for r in rows if r["contract"] == contract]
        if stamps != sorted(stamps):
            problems.append(f"rows of {contract} stored out of timestamp order")
    for r in rows:
        values = [r[c] for c in ("delta", "gamma", "vega", "theta", "dollar_delta")]
        if r["legs"] <= 0 or any(v is not None and not math.isfinite(v) for v in values):
            problems.append(f"a row that is not data: {dict(r)}")
            break
    by_key = {r["bridge_key"]: r for r in rows}
    for key, (contract, stamp) in server.acks.items():
        row = by_key.get(key)
        if row is not None and (row["contract"], row["timestamp"]) != (
            contract,
            datetime.fromisoformat(stamp),
        ):
            problems.append(f"row {key} stored with another contract or timestamp")
            break
    acked = {key for key, (contract, _) in server.acks.items() if contract == "PORTFOLIO"}
    problems += leg_problems(rows, legs, held, whole=acked)
    if server.nacks:
        problems.append(f"a child stopped acknowledging: {server.nacks[0]}")
    if server.drained != 0 or left:
        problems.append(f"buffer not empty at the end ({server.drained} bytes, files {left})")
    torn = [q for q in quarantined if q.get("kind") == "torn"]
    if len(torn) != len(quarantined):
        problems.append(f"{len(quarantined) - len(torn)} quarantined lines not torn by a kill")
    if acked_before_final < 200:
        problems.append(
            f"only {acked_before_final} rows acknowledged: too little work to mean much"
        )
    note = (
        f"{KILLS} kills; submitted = rows acknowledged durable ({acked_before_final} before "
        "the final drain); "
        f"{len(torn)} torn line(s) quarantined (appends cut by a kill, never acknowledged)"
    )
    record(
        Outcome(
            CASE,
            "passed" if not problems else f"FAILED: {problems[0]}",
            submitted=len(server.acks),
            written=len(stored),
            refused=0,
            lost=len(lost),
            duplicated=duplicated,
            note=note,
        )
    )
    assert not problems, "\n".join(problems)
