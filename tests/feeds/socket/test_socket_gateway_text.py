"""SOCKET mode: what the IB Gateway says is quoted bounded and redacted; a flood of garbage
frames neither ends the session nor grows memory or the log without bound."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ibkr_bridge.ops.logs import (
    GATEWAY_LOG_BURST,
    GATEWAY_LOG_WINDOW,
    GATEWAY_TEXT_LIMIT,
    RedactingFilter,
    forget_secrets,
    remember_secret,
)
from ibkr_bridge.sim import single_underlying_portfolio
from ibkr_bridge.sim.faults import FaultScriptError, parse_fault_script
from ibkr_bridge.sim.tws import TwsSimulator

from .test_socket_feed import connected, settle

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "5e55104-t0ken-" + "ab" * 12


@pytest.fixture(autouse=True)
def no_learned_secrets() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


async def test_a_long_ib_error_message_is_cut_and_redacted() -> None:
    remember_secret(TOKEN)
    text = "market data farm note: " + "z" * 10_000 + f" session {TOKEN}\nforged line"
    async with (
        TwsSimulator(single_underlying_portfolio(), tick_interval=10_000_000.0) as sim,
        connected(sim) as (feed, recorder),
    ):
        await sim.error_message(2119, text)
        await sim.error_message(2110, f"{TOKEN} first")  # short: kept whole, but redacted
        await settle(feed)
        events = recorder.events(2119) + recorder.events(2110)
        assert len(events) == 2
        long, short = events
        assert long["message"].startswith("IB 2119: market data farm note: zzz")
        assert long["message"].endswith(f"...[truncated, {len(text)} chars]")
        assert len(long["message"]) < GATEWAY_TEXT_LIMIT + 60
        assert short["message"] == "IB 2110: *** first"
        for e in events:
            assert TOKEN not in e["message"]
            assert "\n" not in e["message"]
        assert feed.connected


def test_fault_scripts_know_error_message_and_garbage_count() -> None:
    steps = parse_fault_script(
        [
            {"at": 1, "fault": "error_message", "code": 2104, "text": "x" * 500},
            {"at": 2, "fault": "garbage", "nbytes": 100, "count": 1000},
        ]
    )
    assert [s.fault for s in steps] == ["error_message", "garbage"]
    for bad in (
        {"at": 1, "fault": "error_message", "code": 2104},
        {"at": 1, "fault": "garbage", "count": -1},
    ):
        with pytest.raises(FaultScriptError):
            parse_fault_script([bad])


def test_a_flood_of_garbage_frames_is_bounded_in_memory_and_log() -> None:
    # 5,000 framed garbage messages of 4 KiB (20 MiB) at a connected feed, in a fresh
    # process so its peak RSS is the feed's (a memory bound, not a timing).
    count, nbytes = 5_000, 4096
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "feeds" / "socket" / "flood_child.py"),
            str(count),
            str(nbytes),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["connected"], "garbage frames ended the session"
    assert result["peak_kib"] < 150 * 1024, result
    # ib_async logs each garbage frame: a burst of lines, then a count, never one per frame.
    assert 1 <= result["log_lines"] <= GATEWAY_LOG_BURST + 1, result
    assert result["longest_line"] < 1000, result


def test_gateway_library_lines_are_limited_per_window_then_counted() -> None:
    now = [0.0]
    gate = RedactingFilter(monotonic=lambda: now[0])

    def record() -> logging.LogRecord:
        return logging.LogRecord("ib_async.decoder", logging.ERROR, "", 0, "junk", None, None)

    shown = [r for r in (record() for _ in range(1000)) if gate.filter(r)]
    assert len(shown) == GATEWAY_LOG_BURST
    other = logging.LogRecord("ibkr_bridge.storage.sink", logging.ERROR, "", 0, "mine", None, None)
    assert gate.filter(other), "the bridge's own lines are never limited"
    now[0] = GATEWAY_LOG_WINDOW
    after = record()
    assert gate.filter(after)
    assert after.getMessage() == f"junk ({1000 - GATEWAY_LOG_BURST} similar lines suppressed)"
