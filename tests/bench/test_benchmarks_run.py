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


@pytest.mark.slow
def test_tick_benchmark_runs() -> None:
    out = run("tick.py", "--legs", "50", "--seconds", "3", "--interval", "0.5")
    phases = {
        m["name"]: m
        for m in re.finditer(
            r"^round 1: (?P<name>baseline|load) \((?P<legs>\d+) legs\): (?P<ticks>\d+) ticks .*"
            r"\((?P<per_tick>\d+)/tick\).*table (?P<table>\d+) rows of (?P<submitted>\d+) "
            r"submitted",
            out,
            re.M,
        )
    }
    assert set(phases) == {"baseline", "load"}, out
    assert phases["baseline"]["legs"] == "0"
    assert phases["load"]["legs"] == "50"
    # A flat account writes one PORTFOLIO row; 10 underlyings add one row each.
    assert phases["baseline"]["per_tick"] == "1"
    assert phases["load"]["per_tick"] == "11"
    for m in phases.values():
        assert int(m["ticks"]) > 0
        assert m["table"] == m["submitted"]
    assert re.search(
        r"^median over 1 round\(s\), 50 legs / 10 underlyings, .*aggregate\+write p50 [\d.]+ ms "
        r"p99 [\d.]+ ms \(target <= 10: (target met|MISSED);.*CPU [\d.]+ % of a core "
        r"\(target <= 2: (target met|MISSED);",
        out,
        re.M,
    ), out
