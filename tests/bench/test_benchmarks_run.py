"""Each benchmark script runs to the end with its smallest settings and prints its summary.

The scripts run as subprocesses, exactly as documented in ``benchmarks/README.md``. Only
what the scripts report about correctness is checked (rows counted back from the table,
rows per tick); their timings are never asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# Only a guard against a hung script, not a timing claim.
HANG_GUARD = 600


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_drain_benchmark_runs() -> None:
    out = run("drain.py", "--rows", "2000", "--batch", "500", "--rounds", "1")
    assert re.search(r"^round 1: drain [\d,]+ rows/s, raw COPY [\d,]+ rows/s", out, re.M), out
    summary = re.search(
        r"^median over 1 rounds of 2,000 rows \(batch 500\): .*ratio [\d.]+", out, re.M
    )
    assert summary, out


def test_write_path_benchmark_runs() -> None:
    out = run("write_path.py", "--calls", "30", "--rounds", "1")
    # Every row written by both bridge paths and by the bare insert is counted back.
    assert re.search(r"^round 1: .*tables 660 of 660 rows \(bare 330 of 330\)$", out, re.M), out
    assert re.search(r"^median over 1 rounds of 30 calls, 11 rows a call: .* [\d.]+x", out, re.M)


@pytest.mark.slow
def test_tick_benchmark_runs() -> None:
    out = run("tick.py", "--legs", "50", "--seconds", "3", "--interval", "0.5", "--profile", "2")
    phases = {
        m["name"]: m
        for m in re.finditer(
            r"^round 1: (?P<name>baseline|load|write) \((?P<legs>\d+) legs\): "
            r"(?P<ticks>\d+) ticks .*"
            r"\((?P<per_tick>\d+)/tick\).*table (?P<table>\d+) rows of (?P<submitted>\d+) "
            r"submitted",
            out,
            re.M,
        )
    }
    assert set(phases) == {"baseline", "load", "write"}, out
    assert phases["baseline"]["legs"] == "0"
    assert phases["load"]["legs"] == "50"
    assert phases["write"]["legs"] == "50"
    assert phases["write"]["per_tick"] == "11"
    # The durable-write phase polls every 0.25 s: more ticks than the 0.5 s load phase.
    assert int(phases["write"]["ticks"]) > int(phases["load"]["ticks"]), out
    # A flat account writes one PORTFOLIO row; 10 underlyings add one row each.
    assert phases["baseline"]["per_tick"] == "1"
    assert phases["load"]["per_tick"] == "11"
    for m in phases.values():
        assert int(m["ticks"]) > 0
        assert m["table"] == m["submitted"]
    # The bare ib_async client requested the 50 legs and their 10 stocks and heard them.
    floor = re.search(
        r"^round 1: floor \(50 legs, bare ib_async client, 60 streams\): [\d.]+ s, "
        r"(?P<updates>\d+) ticker updates; CPU [\d.]+ % of a core",
        out,
        re.M,
    )
    assert floor, out
    assert int(floor["updates"]) > 0, out
    assert re.search(r"^round 1: load .*bare INSERT\+COMMIT p50 [\d.]+ ms p99 [\d.]+ ms", out, re.M)
    assert re.search(
        r"^round 1: .*durable write p99 / bare INSERT\+COMMIT p99 [\d.]+x over \d+ write ticks",
        out,
        re.M,
    ), out
    assert re.search(
        r"^median over 1 rounds, 50 legs / 10 underlyings, .*"
        r"CPU bridge / bare ib_async [\d.]+x of the per-round [\d.]+ "
        r"\(target <= 1.15: (met|NOT MET);.*"
        r"tick work p50 [\d.]+ ms p99 [\d.]+ ms \(target <= 2: (met|NOT MET);.*"
        r"durable write p99 / bare INSERT\+COMMIT p99 [\d.]+x of the per-round [\d.]+ "
        r"\(target <= 1.5: (met|NOT MET); \d+ ticks polled every 0.25 s;",
        out,
        re.M,
    ), out
    profiled = re.search(
        r"^profile: (?P<ticks>\d+) ticks under cProfile, [\d.]+ ms/tick", out, re.M
    )
    assert profiled, out
    assert int(profiled["ticks"]) > 0, out
    # The cumulative listing starts at the writer's tick: only the tick work was profiled.
    assert re.search(r"^profile: .*_writer\.py:\d+\(tick\)", out, re.M), out


SCALING_TINY = ("--sizes", "5,12,12p", "--seconds", "2", "--interval", "0.5")


@pytest.mark.slow
def test_scaling_benchmark_prints_the_table_and_the_hour() -> None:
    out = run(
        "scaling.py", *SCALING_TINY, "--plot", "none",
        "--hour", "--hour-legs", "5", "--hour-seconds", "3",
    )  # fmt: skip
    rows = re.findall(
        r"^\| (?P<legs>[\d,]+(?: \+ position rows)?) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ "
        r"\| [\d.]+ \| [\d.]+ \| (?P<rows>[\d.]+) \| (?P<ticks>\d+) \(\d+\) \| [\d.na/]+ "
        r"\| (?P<positions>[\d.]+) \|$",
        out,
        re.M,
    )
    assert [legs for legs, _, _, _ in rows] == ["5", "12", "12 + position rows"], out
    for legs, rows_per_s, ticks, positions_per_s in rows:
        assert int(ticks) > 0
        assert float(rows_per_s) > 0
        # Per-position rows only where asked for (the child counts them back from the table).
        assert (float(positions_per_s) > 0) == legs.endswith("position rows"), out
    assert re.search(
        r"^accelerated hour, 5 legs, poll 0.1 s, .* RSS [\d.]+ -> max [\d.]+ -> [\d.]+ MB, "
        r"growth [+-][\d.]+ MB \(.*target <= 2: (met|NOT MET)\); CPU [\d.]+ %; "
        r"glibc mmap threshold (pinned|env|unsupported)$",
        out,
        re.M,
    ), out
    assert "plot:" not in out


@pytest.mark.slow
def test_scaling_benchmark_draws_the_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs the bench extra (matplotlib)")
    png = tmp_path / "scaling.png"
    out = run("scaling.py", *SCALING_TINY, "--plot", str(png))
    assert f"plot: {png}" in out
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_scaling_benchmark_says_how_to_install_matplotlib() -> None:
    # As if matplotlib were not installed: a None entry in sys.modules makes the import fail.
    script = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        f"sys.argv = ['scaling.py', '--sizes', '5']; sys.path.insert(0, {str(BENCHMARKS)!r}); "
        f"runpy.run_path({str(BENCHMARKS / 'scaling.py')!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert done.returncode == 2, done
    assert "pip install -e '.[bench]'" in done.stderr
    assert "--plot none" in done.stderr
    assert "size" not in done.stdout  # nothing was measured
