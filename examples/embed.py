"""Embedding ibkr-bridge in your own asyncio application.

    python examples/embed.py                      # 30 s against the IB Gateway simulator
    python examples/embed.py --seconds 0          # until Ctrl-C
    python examples/embed.py --rows 5             # stop after 5 rows
    python examples/embed.py --portfolio examples/portfolio.json --limit 50000

The Bridge runs as one more task of an application that has its own work to do: here a
"risk monitor" that receives every row through a callback and flags a dollar delta above
``--limit``, and a heartbeat that shows the event loop is never blocked. The callback is
synchronous and must not block (it runs inside the bridge's writer), so it only puts the
rows on an :class:`asyncio.Queue`; the application's own task does the work.

The IBKR side is the IB Gateway simulator started in this process; nothing needs an IBKR
account. The database is ``DATABASE_URL`` when set, else the one the test helpers find
(PostgreSQL on 127.0.0.1:5432, else an embedded one from the ``pgserver`` package), in a
private ``ibkr_bridge_embed`` schema. Against a real Gateway, build the settings with
``load_settings()`` (``.env`` and the environment) and drop the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from ibkr_bridge import ApiEvent, Bridge, GreeksRow, Settings, load_settings
from ibkr_bridge.sim import TwsSimulator, default_portfolio, load_portfolio
from ibkr_bridge.testing import find_postgres, stop_embedded_postgres

SCHEMA = "ibkr_bridge_embed"


async def database_url() -> str:
    """``DATABASE_URL``, or a private schema on the PostgreSQL the test helpers find."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    server = await find_postgres()
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
    finally:
        await conn.close()
    return f"{server}{'&' if '?' in server else '?'}search_path={SCHEMA}"


def bridge_settings(sim_port: int, dsn: str, workdir: Path, interval: float) -> Settings:
    """Settings for the simulator; a real app would call ``load_settings()`` instead."""
    return load_settings(
        {
            "IB_API_MODE": "SOCKET",
            "IB_SOCKET_HOST": "127.0.0.1",
            "IB_SOCKET_PORT": str(sim_port),
            "DATABASE_URL": dsn,
            "BRIDGE_BUFFER_PATH": str(workdir / "buffer.jsonl"),
            "BRIDGE_POLL_INTERVAL": str(interval),
        },
        use_dotenv=False,
    )


def _num(value: float | None) -> str:
    return "NULL" if value is None else f"{value:,.2f}"


async def risk_monitor(
    rows: asyncio.Queue[GreeksRow], limit: float, wanted: int, done: asyncio.Event
) -> int:
    """The application's own work on each row; sets ``done`` after ``wanted`` rows (0: never)."""
    seen = 0
    while True:
        row = await rows.get()
        seen += 1
        flag = ""
        if row.dollar_delta is not None and abs(row.dollar_delta) > limit:
            flag = f"  ALERT: |dollar delta| above {limit:,.0f}"
        print(
            f"row {seen}: {row.timestamp:%H:%M:%S} {row.contract:<9} delta={_num(row.delta)} "
            f"vega={_num(row.vega)} theta={_num(row.theta)} "
            f"dollar_delta={_num(row.dollar_delta)}{flag}",
            flush=True,
        )
        rows.task_done()
        if wanted and seen >= wanted:
            done.set()


async def heartbeat(period: float) -> None:
    """Stands for the rest of the application: it keeps running while the bridge works."""
    beats = 0
    while True:
        await asyncio.sleep(period)
        beats += 1
        print(f"heartbeat {beats}", flush=True)


async def main_async(args: argparse.Namespace) -> int:
    portfolio = load_portfolio(args.portfolio) if args.portfolio else default_portfolio()
    dsn = await database_url()
    workdir = Path(tempfile.mkdtemp(prefix="ibkr-bridge-embed-"))
    rows: asyncio.Queue[GreeksRow] = asyncio.Queue()
    done = asyncio.Event()
    events: list[ApiEvent] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, done.set)

    def on_rows(batch: Sequence[GreeksRow]) -> None:
        for row in batch:
            rows.put_nowait(row)

    def on_event(event: ApiEvent) -> None:
        events.append(event)
        if event.event == "transition":
            print(f"event: {event.message}", flush=True)

    tick = min(1.0, args.interval)
    async with TwsSimulator(portfolio, seed=7, tick_interval=tick) as sim:
        settings = bridge_settings(sim.port, dsn, workdir, args.interval)
        bridge = Bridge(settings, on_rows=on_rows)
        bridge.add_event_callback(on_event)
        async with asyncio.TaskGroup() as app:
            monitor = app.create_task(risk_monitor(rows, args.limit, args.rows, done))
            beat = app.create_task(heartbeat(max(args.interval, 1.0)))
            async with bridge:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), args.seconds if args.seconds > 0 else None)
            # The bridge has stopped: every row it handed over is durable by now.
            await rows.join()  # let the monitor see the last rows
            monitor.cancel()
            beat.cancel()
        status = bridge.status
    print(
        f"embed: {status.rows_submitted} rows written, {len(events)} events, "
        f"final state {status.connection}, breaker {status.breaker}",
        flush=True,
    )
    if status.buffer_pending_bytes:
        # The database was unreachable at the end: the rows wait there, never deleted.
        print(f"embed: rows still buffered in {settings.buffer_path}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="ibkr-bridge inside another asyncio app")
    parser.add_argument("--seconds", type=float, default=30.0, help="0 = until Ctrl-C")
    parser.add_argument("--rows", type=int, default=0, help="stop after this many rows (0: no)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between rows")
    parser.add_argument("--limit", type=float, default=100_000.0, help="dollar delta alert")
    parser.add_argument("--portfolio", help="portfolio JSON/TOML (default: the demo's)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    finally:
        stop_embedded_postgres()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
