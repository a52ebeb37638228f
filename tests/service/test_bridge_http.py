"""BRIDGE_HTTP_PORT makes the Bridge itself serve /healthz and /metrics, and free the port."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp

from ibkr_bridge import Bridge, ConnectionState, load_settings
from ibkr_bridge.sim import TwsSimulator, single_underlying_portfolio
from ibkr_bridge.testing import TestDatabase, wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_bridge_serves_health_and_metrics_on_the_configured_port(
    db: TestDatabase, tmp_path: Path
) -> None:
    port = _free_port()
    async with TwsSimulator(single_underlying_portfolio(), tick_interval=0.2) as sim:
        settings = load_settings(
            {
                "IB_SOCKET_PORT": str(sim.port),
                "DATABASE_URL": db.dsn,
                "BRIDGE_BUFFER_PATH": str(tmp_path / "buffer.jsonl"),
                "BRIDGE_POLL_INTERVAL": "0.2",
                "BRIDGE_HTTP_PORT": str(port),
            },
            use_dotenv=False,
        )
        async with Bridge(settings) as bridge, aiohttp.ClientSession() as http:
            await wait_until(lambda: bridge.status.rows_submitted > 0)
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
                body = await r.json()
            assert body["connection"] == ConnectionState.LIVE.value
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            assert 'ibkr_bridge_state{machine="connection",state="LIVE"} 1.0' in text
    with socket.socket() as s:  # stopped: the port is free again
        s.bind(("127.0.0.1", port))
