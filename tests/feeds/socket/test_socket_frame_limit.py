"""SOCKET mode: a Gateway announcing one huge frame is disconnected at its length prefix,
instead of ib_async buffering towards the announced size (memory without bound)."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ib_async import IB

from ibkr_bridge.feeds.socket import MAX_FRAME_BYTES, FrameLimit, SocketFeed
from ibkr_bridge.feeds.socket._session import _Session
from ibkr_bridge.sim import single_underlying_portfolio
from ibkr_bridge.sim.tws import TwsSimulator

from .test_socket_feed import GUARD, connected, eventually, settle

ROOT = Path(__file__).resolve().parents[3]
LIMIT = 4096


def framed(size: int) -> bytes:
    return struct.pack(">I", size) + b"x" * size


def test_frames_up_to_the_limit_pass_in_any_split() -> None:
    stream = framed(0) + framed(LIMIT) + framed(7) + framed(LIMIT - 1)
    for cut in range(1, 40):  # every way of cutting the stream into equal reads
        frames = FrameLimit(LIMIT)
        reads = [stream[i : i + cut] for i in range(0, len(stream), cut)]
        assert [frames.oversized(r) for r in reads] == [None] * len(reads), cut


def test_the_first_frame_over_the_limit_is_named_even_with_its_prefix_split() -> None:
    stream = framed(10) + framed(LIMIT) + struct.pack(">I", LIMIT + 1) + b"y" * 100
    for cut in range(1, 30):
        frames = FrameLimit(LIMIT)
        answers = [frames.oversized(stream[i : i + cut]) for i in range(0, len(stream), cut)]
        assert [a for a in answers if a is not None][:1] == [LIMIT + 1], cut
    # One read holding good frames and then the bad prefix: named at once.
    assert FrameLimit(LIMIT).oversized(stream) == LIMIT + 1
    assert FrameLimit().limit == MAX_FRAME_BYTES == 16 * 1024 * 1024


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        SocketFeed(max_frame_bytes=0)


async def test_a_frame_over_the_limit_drops_the_connection_with_one_short_reason() -> None:
    async with (
        TwsSimulator(single_underlying_portfolio(), tick_interval=10_000_000.0) as sim,
        connected(sim, max_frame_bytes=LIMIT) as (feed, recorder),
    ):
        await sim.garbage(LIMIT, framed=True, count=3)  # at the limit: ib_async's to judge
        await settle(feed)
        assert feed.connected
        assert recorder.of("disconnected") == []
        sent = await sim.huge_frame(size=LIMIT + 1, nbytes=LIMIT + 1, chunk=64)
        await eventually(lambda: recorder.of("disconnected"), "the feed to drop the connection")
        (drop,) = recorder.of("disconnected")
        assert drop["reason"].startswith(
            f"gateway announced a frame of {LIMIT + 1} bytes, more than {LIMIT}: "
            "connection dropped after "
        )
        assert len(drop["reason"]) < 200
        assert not feed.connected
        await eventually(lambda: sim.open_connections == 0, "the socket to close")
        assert sent <= LIMIT + 1
        await feed.connect()  # the next connection is a fresh one, followed from its start
        await settle(feed)
        assert feed.connected


class HugeHandshakeSimulator(TwsSimulator):
    """Answers startApi with a 2 GiB frame announcement instead of the managed accounts."""

    def _dispatch(self, conn: Any, fields: list[str]) -> None:
        if fields[0] == "71":
            self._write(conn, struct.pack(">I", 1 << 31) + b"\x7f" * 65_536)
            return
        super()._dispatch(conn, fields)


async def test_a_huge_frame_while_connecting_fails_the_connect_at_once() -> None:
    async with HugeHandshakeSimulator(
        single_underlying_portfolio(), tick_interval=10_000_000.0
    ) as sim:
        # A connect timeout far beyond the test's guard: failing means the frame did it.
        feed = SocketFeed(port=sim.port, client_id=10, connect_timeout=3600, max_frame_bytes=LIMIT)
        with pytest.raises(ConnectionError, match=f"announced a frame of {1 << 31} bytes"):
            await asyncio.wait_for(feed.connect(), GUARD)
        assert not feed.connected


def test_every_byte_the_socket_reads_goes_through_the_check_once() -> None:
    feed = SocketFeed()
    session = _Session(feed)
    has_data = session.ib.client.conn.hasData
    assert session.on_socket_data in has_data
    assert session.ib.client._onSocketHasData not in has_data
    assert len(has_data) == 1


async def test_other_ib_objects_keep_ib_async_s_own_handling() -> None:
    # The limit is on the bridge's own IB instance, not patched into ib_async: a user's IB
    # in the same process still buffers a frame announced at 2 GiB as ib_async does.
    async with (
        TwsSimulator(single_underlying_portfolio(), tick_interval=10_000_000.0) as sim,
        connected(sim) as (feed, _),
    ):
        other = IB()
        other.client.conn.hasData.emit(struct.pack(">I", 1 << 31) + b"z" * 1000)
        assert len(other.client._data) == 1004
        assert feed.connected


def test_a_huge_frame_is_refused_before_memory_grows_and_the_bridge_reconnects() -> None:
    # A real Bridge in a fresh process (its peak RSS is the bridge's: a memory bound, not a
    # timing); the Gateway announces 2 GiB and streams up to 300 MB of it. The child stops
    # the stream if RSS passes the bound, so a client that buffers fails here in seconds.
    bound_kib = 150 * 1024
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "feeds" / "socket" / "huge_frame_child.py"),
            str(300_000_000),
            str(bound_kib),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["hit_bound"], f"RSS grew past 150 MB while the frame streamed: {result}"
    assert result["peak_kib"] < bound_kib, result
    assert 0 <= result["sent_bytes"] < 300_000_000, result  # the bridge hung up early
    assert result["reconnected"], result
    assert result["connections"] == 1, result
    reason = f"gateway announced a frame of {1 << 31} bytes, more than {MAX_FRAME_BYTES}"
    (event,) = result["events"]
    assert (event["event"], event["status"]) == ("disconnect", "warning"), event
    assert reason in event["message"], event
    assert len(event["message"]) < 300, event
    (line,) = result["log_lines"]
    assert reason in line
    assert len(line) < 400, line
