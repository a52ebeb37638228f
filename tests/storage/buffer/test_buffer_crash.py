"""kill -9 the buffer's user at random moments: no acknowledged record is lost or doubled.

``crash_writer.py`` appends numbered records (acknowledging each after ``append`` returned)
and drains them into an idempotent "sink" standing in for the database. It is killed with
SIGKILL many times, restarted each time, and finally drains what is left. Every few kills
the test also leaves a torn last line, as a power cut during an append would (SIGKILL does
not tear a write on Linux): it must end up in the quarantine exactly once.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ibkr_bridge.core.records import GreeksRow, record_to_json

WRITER = Path(__file__).with_name("crash_writer.py")
RUNS = 50


def _tear(buffer: Path, rng: random.Random, run: int) -> str | None:
    """Leave the start of a line no one acknowledged at the end of the buffer file."""
    if not buffer.exists() or not buffer.read_bytes().endswith(b"\n"):
        return None
    stamp = datetime(2024, 1, 2, tzinfo=UTC)
    line = record_to_json(GreeksRow(timestamp=stamp, account="U1", api_mode="X", key=f"t{run}"))
    # Cut after the key so that each run's fragment is distinct.
    fragment = line[: rng.randrange(line.index(f'"t{run}"') + 5, len(line))]
    with buffer.open("a") as f:
        f.write(fragment)
    return fragment


def _lines(path: Path) -> list[str]:
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1].decode().splitlines()


@pytest.mark.slow
def test_kill9_loses_and_doubles_nothing(tmp_path: Path) -> None:
    buffer, sink, acks = tmp_path / "buf.jsonl", tmp_path / "sink.txt", tmp_path / "acks.txt"
    files = ["--buffer", str(buffer), "--sink", str(sink), "--acks", str(acks)]
    rng = random.Random(20240102)
    killed_running = 0
    torn: list[str] = []
    for run in range(RUNS):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), *files, "--seed", str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # the buffer is open: from here on it is working
        if ready != b"ready\n":
            proc.kill()
            pytest.fail(f"writer run {run} did not start: {proc.communicate()[1].decode()}")
        # The moment of the kill is what is random here; the process never ends by itself.
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()
        _, err = proc.communicate()
        if proc.returncode == -9:
            killed_running += 1
        else:
            pytest.fail(f"writer run {run} ended on its own: {err.decode()}")
        if run % 4 == 3 and (fragment := _tear(buffer, rng, run)) is not None:
            torn.append(fragment)
    final = subprocess.run(
        [sys.executable, str(WRITER), *files, "--drain-only"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert final.returncode == 0, final.stderr.decode()

    acked = [int(n) for n in _lines(acks)]
    in_sink = [int(key[1:]) for key in _lines(sink)]
    assert killed_running == RUNS
    assert len(acked) > 100, "the writer made too little progress to prove anything"
    assert len(in_sink) == len(set(in_sink)), "a record reached the sink twice"
    assert in_sink == sorted(in_sink), "the sink's order differs from the append order"
    missing = sorted(set(acked) - set(in_sink))
    assert not missing, f"acknowledged records lost: {missing[:20]}"
    # Unacknowledged extras are allowed (appended, killed before the ack) but only of
    # numbers that were actually being written: at most one batch past the last ack.
    assert max(in_sink) < max(acked) + 150 + 1
    assert not buffer.exists(), "the drained buffer was not compacted"
    entries = [json.loads(line) for line in _lines(tmp_path / "buf.jsonl.quarantine")]
    # Only torn remnants of appends that never returned may end up there, each once.
    assert {e["kind"] for e in entries} <= {"torn"}
    assert len(torn) >= 5
    found = Counter(e["text"] for e in entries)
    assert all(found[fragment] == 1 for fragment in torn), (found, torn)
