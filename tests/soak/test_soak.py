"""The soak (``benchmarks/soak.py``): its checks catch what they claim to catch, its
schedule keeps the same fault kinds when compressed, and the short form passes end to end
for both modes (marked slow; CI runs it).

The checks are fed hand-made observations (journal records, table rows, api_logs events)
with one defect each, so a check that could never fail would fail here.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.sim import black_scholes, single_underlying_portfolio
from ibkr_bridge.sim.portfolio import NEW_YORK, SPY_CONID
from ibkr_bridge.storage.buffer import JsonlBuffer

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
HANG_GUARD = 900  # only a guard against a hung soak, not a timing claim


def _load() -> ModuleType:
    # soak.py imports soak_child.py from its own directory, as when run as a script.
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("soak", BENCHMARKS / "soak.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


soak: Any = _load()
child: Any = sys.modules["soak_child"]

START = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)
END = START + timedelta(hours=1)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def observed(**kwargs: Any) -> Any:
    return soak.Observed(START, END, **kwargs)


def submitted(seconds: float, key: str, durable: bool = True) -> Any:
    return soak.Submitted(at(seconds), key, "PORTFOLIO", durable, 1)


def row(i: int, seconds: float, key: str, **greeks: float | None) -> Any:
    values = {"delta": 1.0, "gamma": 0.1, "vega": 2.0, "theta": -3.0, **greeks}
    missing = sum(v is None for v in values.values())
    return soak.Row(i, at(seconds), "PORTFOLIO", **values, legs=4, legs_missing=missing, key=key)


def event(i: int, seconds: float, name: str, *states: str) -> Any:
    """An api_logs row; for a transition, ``states`` is (source, dest, trigger)."""
    src, dst, trigger = states if states else (None, None, None)
    machine = "connection" if name == "transition" else None
    return soak.Event(i, at(seconds), name, machine, src, dst, trigger, f"e{i}")


def violations(check: str, *args: Any) -> list[str]:
    report = soak.Report("TEST")
    getattr(soak, check)(*args, report)
    return list(report.violations)


# -- the schedule ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["SOCKET", "PORTAL"])
def test_the_short_form_keeps_every_fault_kind_and_the_reset_window(mode: str) -> None:
    short, full = child.schedule(mode, 2), child.schedule(mode, 24)
    assert Counter(f.name for f in short) == Counter(f.name for f in full)
    assert Counter(f.name for f in full)["gateway_restart"] == 2
    assert {f.name for f in full} >= {"db_refused", "db_cut", "db_blackhole", "nightly_reset"}
    for hours, faults in ((2, short), (24, full)):
        start = child.soak_start(hours)
        reset = next(f.at for f in faults if f.name == "nightly_reset")
        when = (start + timedelta(seconds=reset)).astimezone(NEW_YORK)
        assert when.strftime("%H:%M:%S") == "23:45:00"
        for f in faults:
            assert f.at > 0, f
            assert f.end < hours * 3600 - 300, f
            if f.name != "nightly_reset":
                # Nothing else touches the reset window and the wait until 00:05 ET.
                assert f.end < reset - 600 or f.at > reset + 1500, f
        kill = [f for f in faults if f.params.get("kill")]
        assert [f.name for f in kill] == ["db_refused"]
    assert max(f.duration for f in full if f.name.startswith("db_")) > 3600
    assert child.soak_start(24).astimezone(NEW_YORK).strftime("%H:%M") == "08:45"
    assert child.soak_start(2).astimezone(NEW_YORK).strftime("%H:%M") == "22:30"
    with pytest.raises(ValueError, match="2 simulated hours"):
        child.schedule(mode, 1)


# -- Greeks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spot", "strike", "days", "right"),
    [(600.0, 600.0, 30.0, "C"), (590.0, 580.0, 30.0, "P"), (600.0, 620.0, 0.5, "C")],
)
def test_the_independent_black_scholes_agrees_with_the_simulators(
    spot: float, strike: float, days: float, right: str
) -> None:
    mine = soak.bs_greeks(spot, strike, days / 365.0, 0.18, 0.04, right == "C")
    theirs = black_scholes(spot, strike, days / 365.0, 0.18, 0.04, right)
    assert mine == pytest.approx((theirs.delta, theirs.gamma, theirs.vega, theirs.theta), rel=1e-12)


def book_net(when: datetime, spot: float) -> dict[str, float]:
    """Net Greeks of the soak's book from the simulator's own model (not soak.py's)."""
    book = single_underlying_portfolio(as_of=START)
    book.set_spot(SPY_CONID, spot)
    net = dict.fromkeys(("delta", "gamma", "vega", "theta"), 0.0)
    for pos in book.positions():
        g = book.greeks(pos.conid, when)
        if g is None:
            net["delta"] += pos.quantity
            continue
        for name in net:
            net[name] += pos.quantity * pos.instrument.multiplier * getattr(g, name)
    return net


def greeks_world(sentinel: bool = False) -> Any:
    book = single_underlying_portfolio(as_of=START)
    held = {p.conid: p.quantity for p in book.positions()}
    faults = []
    if sentinel:
        faults.append(soak.FaultMark("sentinel", "start", 0.0, 300.0, at(100), {}, 1))
    spots = [(at(0), 600.0), (at(55), 601.0)]
    return observed(spots=spots, positions=[(at(0), held)], faults=faults)


def test_rows_equal_to_a_recent_recomputation_pass() -> None:
    # Valued at 55 s (just after the step to 601) and written 5 s later, at 60 s.
    net = book_net(at(55), 601.0)
    assert violations("check_greeks", greeks_world(), [row(1, 60, "a", **net)]) == []


@pytest.mark.parametrize(
    "defect",
    ["a delta off by 1e-6", "valued 20 s before the row", "the spot before the step"],
)
def test_rows_that_no_recomputation_reproduces_are_reported(defect: str) -> None:
    net = book_net(at(55), 601.0)
    if defect == "a delta off by 1e-6":
        net["delta"] *= 1 + 1e-6
    elif defect == "valued 20 s before the row":
        net = book_net(at(40), 600.0)
    else:
        net = book_net(at(60), 600.0)
    found = violations("check_greeks", greeks_world(), [row(1, 60, "a", **net)])
    assert len(found) == 1
    assert "equals no recomputation" in found[0]


def test_null_greeks_are_accepted_only_inside_a_sentinel_episode() -> None:
    net = book_net(at(115), 601.0)
    nulls = {**net, "vega": None, "theta": None}
    assert (
        violations("check_greeks", greeks_world(sentinel=True), [row(1, 120, "a", **nulls)]) == []
    )
    found = violations("check_greeks", greeks_world(), [row(1, 120, "a", **nulls)])
    assert len(found) == 1
    assert "outside a sentinel" in found[0]


# -- rows, duplicates, order ---------------------------------------------------------------


def test_clean_rows_pass_and_a_row_in_flight_at_the_kill_may_be_missing() -> None:
    obs = observed(submitted=[submitted(5, "a"), submitted(10, "b"), submitted(15, "c", False)])
    assert violations("check_rows", obs, [row(1, 5, "a"), row(2, 10, "b")]) == []
    assert violations("check_rows", obs, [row(1, 5, "a"), row(2, 10, "b"), row(3, 15, "c")]) == []


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([(1, 5, "a")], "row lost"),
        ([(1, 5, "a"), (2, 10, "b"), (3, 20, "zz")], "never submitted"),
        ([(1, 5, "a"), (2, 10, "b"), (3, 10, "c")], "duplicated (contract, timestamp)"),
        ([(2, 5, "a"), (1, 10, "b")], "out of order"),
    ],
)
def test_lost_unknown_duplicated_and_disordered_rows_are_reported(
    rows: list[tuple[int, float, str]], expected: str
) -> None:
    obs = observed(submitted=[submitted(5, "a"), submitted(10, "b"), submitted(10, "c")])
    found = violations("check_rows", obs, [row(*r) for r in rows])
    assert any(expected in v for v in found), found


# -- gaps --------------------------------------------------------------------------------


def rows_with_hole() -> list[Any]:
    """A row every 5 s, except from 30 s to 90 s."""
    times = [t for t in range(5, 3600, 5) if not 30 < t < 90]
    return [row(i, t, f"k{i}") for i, t in enumerate(times)]


def test_a_gap_nothing_in_api_logs_explains_is_reported() -> None:
    found = violations("check_gaps", observed(), rows_with_hole(), [])
    assert len(found) == 1
    assert "nothing in api_logs explains it" in found[0]


def test_a_gap_covered_by_a_logged_disconnection_passes() -> None:
    events = [
        event(1, 32, "transition", "LIVE", "BACKOFF", "disconnected"),
        event(2, 37, "transition", "BACKOFF", "CONNECTING", "retry_due"),
        event(3, 85, "transition", "CONNECTING", "LIVE", "connected"),
    ]
    assert violations("check_gaps", observed(), rows_with_hole(), events) == []


def test_a_gap_longer_than_the_episode_logged_in_it_is_reported() -> None:
    events = [event(1, 35, "skipped"), event(2, 40, "resumed")]
    found = violations("check_gaps", observed(), rows_with_hole(), events)
    assert len(found) == 1


# -- events, drift, buffer files ---------------------------------------------------------


def seen(i: int, durable: bool = True) -> Any:
    return soak.Seen(at(i), f"e{i}", "transition", "connection", "A", "B", durable, 1, 0.0)


def test_events_seen_but_not_logged_or_logged_but_never_seen_are_reported() -> None:
    logged = [event(1, 1, "transition"), event(2, 2, "transition")]
    assert (
        violations("check_events", observed(seen=[seen(1), seen(2), seen(3, False)]), logged) == []
    )
    lost = violations("check_events", observed(seen=[seen(1), seen(2), seen(3)]), logged)
    assert len(lost) == 1
    assert "event lost" in lost[0]
    unknown = violations("check_events", observed(seen=[seen(1)]), logged)
    assert len(unknown) == 1
    assert "no callback saw" in unknown[0]


def test_rows_off_the_cadence_of_their_live_episode_are_reported() -> None:
    live = soak.Seen(at(100), "L", "transition", "connection", "CONNECTING", "LIVE", True, 1, 0.0)
    obs = observed(seen=[live], submitted=[submitted(105, "a"), submitted(110, "b")])
    assert violations("check_drift", obs, [row(1, 105, "a"), row(2, 110, "b")]) == []
    obs.submitted.append(submitted(117, "c"))
    found = violations("check_drift", obs, [row(1, 105, "a"), row(2, 110, "b"), row(3, 117, "c")])
    assert found == ["cadence drift 2.000000 s"]


def test_pending_bytes_reads_what_the_buffer_itself_reports(tmp_path: Path) -> None:
    path = tmp_path / "buffer.jsonl"
    records = [
        GreeksRow(timestamp=at(5 * i), account="DU1", api_mode="SOCKET", delta=float(i))
        for i in range(5)
    ]
    assert soak.pending_bytes(path) == 0
    with JsonlBuffer(path) as buffer:
        buffer.append(records)
        assert soak.pending_bytes(path) == buffer.pending_bytes > 0
        buffer.commit(buffer.read_raw_batch(2))
        assert soak.pending_bytes(path) == buffer.pending_bytes > 0
        buffer.commit(buffer.read_raw_batch(10))
    assert soak.pending_bytes(path) == 0


# -- the short soak, end to end ------------------------------------------------------------


@pytest.mark.slow
def test_a_two_hour_soak_of_both_modes_finds_no_violation(
    pg_server_dsn: str, tmp_path: Path
) -> None:
    args = ["--mode", "both", "--hours", "2", "--dsn", pg_server_dsn, "--workdir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "soak.py"), *args],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert out.rstrip().endswith("OK: no violation"), out
    for mode in ("SOCKET", "PORTAL"):
        section = out[out.index(f"[{mode}]\n") :]
        assert re.search(r"^  violations +0$", section, re.M), section
        expected = re.search(r"^  rows +([\d,]+) expected .*, ([\d,]+) written;", section, re.M)
        assert expected is not None, section
        # 2 h is 1,440 ticks; outages of the gateway and the reset wait take their share.
        assert int(expected[1].replace(",", "")) > 700, section
        assert expected[1] == expected[2], section
        assert re.search(r"^  kill -9 +at .* mid-drain: [\d,]+ bytes left", section, re.M)
