"""The ibkr-bridge demo: no IBKR account needed.

    python3 dev.py demo                 # SOCKET mode against the IB Gateway simulator
    python3 dev.py demo --mode PORTAL   # PORTAL mode against the Client Portal simulator
    python3 dev.py demo --seconds 0     # run until Ctrl-C

It starts an IBKR simulator in this process (a demo portfolio of SPY stock and options and
ES futures options, prices moving on a seeded random walk), uses ``DATABASE_URL`` when it
is reachable (else PostgreSQL on 127.0.0.1:5432, else an embedded PostgreSQL from the
``pgserver`` package), and runs the real Bridge against them, printing one line per tick.
Rows go to ``portfolio_greeks`` (per underlying: ``underlying_greeks``, per position:
``position_greeks``, which the demo turns on with BRIDGE_POSITION_ROWS) and events to
``api_logs`` in the schema it names (a private ``ibkr_bridge_demo`` schema unless
``DATABASE_URL`` is set).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from ibkr_bridge import Bridge, GreeksRow, load_settings
from ibkr_bridge.ops.logs import configure_logging
from ibkr_bridge.sim import TwsSimulator, default_portfolio
from ibkr_bridge.testing import find_postgres, stop_embedded_postgres


def _fmt(value: float | None, width: int = 10, digits: int = 2) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width},.{digits}f}"


async def _database(schema: str) -> tuple[str, str]:
    """(dsn for the bridge, description for the reader)."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"], "DATABASE_URL"
    server = await find_postgres()
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await conn.close()
    sep = "&" if "?" in server else "?"
    return f"{server}{sep}search_path={schema}", f"schema {schema} on {server.split('?')[0]}"


async def demo(mode: str, seconds: float, interval: float) -> int:
    portfolio = default_portfolio()
    dsn, where = await _database("ibkr_bridge_demo")
    workdir = Path(tempfile.mkdtemp(prefix="ibkr-bridge-demo-"))
    env = {
        "IB_API_MODE": mode,
        "DATABASE_URL": dsn,
        "BRIDGE_BUFFER_PATH": str(workdir / "buffer.jsonl"),
        "BRIDGE_POLL_INTERVAL": str(interval),
        "BRIDGE_LOG_LEVEL": "WARNING",
        "BRIDGE_POSITION_ROWS": "true",  # one position_greeks row per leg per tick
    }
    async with contextlib.AsyncExitStack() as stack:
        if mode == "SOCKET":
            sim = await stack.enter_async_context(TwsSimulator(portfolio, seed=7))
            env |= {"IB_SOCKET_HOST": "127.0.0.1", "IB_SOCKET_PORT": str(sim.port)}
            print(f"IB Gateway simulator listening on 127.0.0.1:{sim.port}")
        else:
            from ibkr_bridge.sim.portal import PortalSimulator

            portal = await stack.enter_async_context(PortalSimulator(portfolio, walk_interval=1.0))
            env |= {"IBKR_GATEWAY_URL": portal.url, "IBKR_GATEWAY_CA": str(portal.ca_path)}
            print(f"Client Portal simulator listening on {portal.url}")
        settings = load_settings(env, use_dotenv=False)
        configure_logging(settings.log_format, settings.log_level)
        print(f"writing to {where}; buffer {settings.buffer_path}")
        print(
            f"{'time (UTC)':<8} {'state':<6} {'contract':<10} {'delta':>10} {'gamma':>10} "
            f"{'vega':>10} {'theta':>10} {'underlying':>10}"
        )

        def show(rows: Sequence[GreeksRow]) -> None:
            for row in rows:
                print(
                    f"{row.timestamp:%H:%M:%S} {bridge.status.connection:<6} {row.contract:<10}"
                    f"{_fmt(row.delta)} {_fmt(row.gamma, digits=4)} {_fmt(row.vega)} "
                    f"{_fmt(row.theta)} {_fmt(row.underlying_price)}",
                    flush=True,
                )

        bridge = Bridge(settings, on_rows=show)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        async with bridge:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds if seconds > 0 else None)
        status = bridge.status
    print(
        f"done: {status.rows_submitted} rows and {status.positions_submitted} position rows "
        f"written, final state {status.connection}, breaker {status.breaker}. The rows are in "
        f"portfolio_greeks (per underlying: underlying_greeks; per position: position_greeks), "
        f"the events in api_logs ({where})."
    )
    stop_embedded_postgres()
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="ibkr-bridge demo (no IBKR account needed)")
    parser.add_argument("--mode", choices=["SOCKET", "PORTAL"], default=None)
    parser.add_argument("--seconds", type=float, default=60.0, help="0 = until Ctrl-C")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between rows")
    args = parser.parse_args(argv)
    mode = (args.mode or os.environ.get("IB_API_MODE") or "SOCKET").strip().upper()
    return asyncio.run(demo(mode, args.seconds, args.interval))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
