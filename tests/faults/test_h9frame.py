"""Fault-matrix row: a Gateway announcing one huge frame (issue 10, hostile bodies).

``gw-huge-frame-announced``: the Gateway announces a 2 GiB frame and streams filler into
it. The bridge drops the connection at the length prefix with one ``disconnect`` event
naming the size, reconnects through its back-off, and every acknowledged row is in
PostgreSQL exactly once (the harness's common invariants).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ibkr_bridge.feeds.socket import MAX_FRAME_BYTES
from ibkr_bridge.testing import TestDatabase

from .harness import Case, World, assert_report, run_case

ANNOUNCED = 1 << 31
STREAMED = 64 * 1024 * 1024


async def huge_frame(w: World) -> None:
    await w.data_ready()
    await w.rows_flow(1)
    sent = await w.sim.huge_frame(size=ANNOUNCED, nbytes=STREAMED)
    assert sent < STREAMED, f"the bridge let {sent} bytes of a {ANNOUNCED}-byte frame in"
    w.scratch["sent"] = sent


async def verify_huge_frame(w: World) -> None:
    assert w.reached("connection", "BACKOFF"), "the connection was not dropped"
    _, logs = await w.fetch_tables()
    named = [r["message"] for r in logs if "announced a frame" in r["message"]]
    assert len(named) == 1, named
    assert f"a frame of {ANNOUNCED} bytes, more than {MAX_FRAME_BYTES}" in named[0]
    assert len(named[0]) < 300, named[0]


CASES = [
    Case(
        "gw-huge-frame-announced",
        huge_frame,
        verify=verify_huge_frame,
        note="2 GiB frame announced, 64 MiB streamed: dropped at the prefix, one event, LIVE again",
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
async def test_huge_frame(case: Case, db: TestDatabase, tmp_path: Path) -> None:
    assert_report(await run_case(case, db, tmp_path))
