"""How the bridge's cost grows with the book (10 to 5,000 legs: a table, a plot), and RSS over time.

    python benchmarks/scaling.py                      # 10, 100, 1,000 (+1,000p), 5,000 legs
    python benchmarks/scaling.py --seconds 600        # the issue's 10 minutes per size
    python benchmarks/scaling.py --hour               # + RSS over an accelerated hour
    python benchmarks/scaling.py --sizes 10,50,50p --seconds 3 --interval 0.5 --plot none  # smoke

Each size runs in a fresh child process (this script with ``--child``), so the RSS it reports
is that size's alone: the real Bridge in SOCKET mode against the simulator in its own
subprocess, its own schema and buffer, exactly as the load phase of ``tick.py``
(``tick_load.run_phase``; ``min(10, legs)`` underlyings). Per size, over a window of
``--seconds`` that starts at the first tick that wrote rows:

- CPU share: the child's user+system CPU over the window's wall time (% of one core);
- tick p50/p99: ``TickInfo.duration`` (snapshot + aggregate + hand-off to the writer);
- RSS at the start and at the end of the window (``/proc/self/statm``);
- rows/s: rows written over the window's wall time (``PORTFOLIO`` + one per underlying per
  tick: it follows the poll interval and the underlyings, not the legs);
- position rows/s: for a size written ``1000p`` (per-position rows on,
  ``BRIDGE_POSITION_ROWS=true``), one ``position_greeks`` row per leg per tick.

Each child fixes glibc's mmap threshold as ``ibkr-bridge run`` does
(:mod:`ibkr_bridge.ops.malloc`); ``--dynamic-mmap-threshold`` measures without it.

``--plot PATH`` (default ``docs/scaling.png``; ``none`` to skip) draws CPU share, tick p99 and
RSS against the number of legs with matplotlib, the ``bench`` extra
(``pip install -e '.[bench]'``); without it the script stops before measuring and says so.

``--hour``: one more child, 1,000 legs, an hour of production ticks accelerated: the poll
interval is 0.1 s (720 ticks, an hour at 5 s, every 72 s) and the simulator streams every
0.25 s, for ``--hour-seconds`` (120 s: 1,200 ticks). RSS is sampled every second; the figure
is the median of the last quarter of the samples minus the median of the second quarter
(after warm-up). Target: no growth (<= 2 MB, the sampling noise of a Python heap).

Exit status 1 only when a child's correctness checks failed (rows in the table != rows
submitted, no tick wrote rows) or a child failed; timings never change it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_PLOT: Final = ROOT / "docs" / "scaling.png"
INSTALL_HINT: Final = (
    "matplotlib is needed to draw the plot: pip install -e '.[bench]' (or pip install "
    "matplotlib) in the project's virtualenv, or pass --plot none for the table only"
)
RSS_GROWTH_LIMIT_MB: Final = 2.0


async def child(args: argparse.Namespace) -> int:
    """One size in this process; prints ``result {json}``."""
    from tick_load import book, check, run_phase

    from ibkr_bridge.ops.malloc import pin_mmap_threshold
    from ibkr_bridge.testing import find_postgres, stop_embedded_postgres

    # As `ibkr-bridge run` does (ibkr_bridge.ops.malloc), unless told to measure without.
    malloc = "dynamic" if args.dynamic_mmap_threshold else pin_mmap_threshold()

    server = await find_postgres()
    underlyings = min(10, args.legs)
    with tempfile.TemporaryDirectory() as tmp:
        r = await run_phase(
            "load",
            book(args.legs, underlyings),
            args,
            server,
            Path(tmp),
            bare=False,
            position_rows=args.position_rows,
        )
    stop_embedded_postgres()
    problems = check(r)
    print(
        "result "
        + json.dumps(
            {
                "legs": r.legs,
                "position_rows": args.position_rows,
                "positions": r.positions,
                "underlyings": underlyings,
                "window": r.window,
                "ticks": r.ticks,
                "missed": r.missed,
                "rows": r.rows,
                "cpu_pct": r.cpu_pct,
                "sim_cpu_pct": r.sim_cpu_pct,
                "tick_p50": r.p("tick", 50),
                "tick_p99": r.p("tick", 99),
                "tick_cpu_p99": r.p("cpu", 99),
                "rss": list(r.rss_mb),
                "malloc": malloc,
                "problems": problems,
            }
        ),
        flush=True,
    )
    return 1 if problems else 0


def run_child(
    legs: int,
    seconds: float,
    interval: float,
    sim: float,
    args: argparse.Namespace,
    *,
    position_rows: bool = False,
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--legs", str(legs),
        "--seconds", str(seconds),
        "--interval", str(interval),
        "--sim-tick-interval", str(sim),
        "--probe-interval", str(args.probe_interval),
        "--startup-timeout", str(args.startup_timeout),
        *(["--dynamic-mmap-threshold"] if args.dynamic_mmap_threshold else []),
        *(["--position-rows"] if position_rows else []),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("result "):
            result: dict[str, Any] = json.loads(line[len("result ") :])
            result["returncode"] = done.returncode
            return result
    sys.stderr.write(done.stderr[-3000:])
    raise SystemExit(f"the child for {legs} legs exited {done.returncode} without a result")


def parse_sizes(text: str) -> list[tuple[int, bool]]:
    """``10,1000,1000p``: legs per size; a ``p`` suffix turns per-position rows on."""
    sizes = []
    for token in (t.strip().lower() for t in text.split(",")):
        if token:
            position_rows = token.endswith("p")
            sizes.append((int(token.removesuffix("p")), position_rows))
    return sizes


def size_label(r: dict[str, Any]) -> str:
    return f"{r['legs']:,}" + (" + position rows" if r["position_rows"] else "")


def rss_growth(samples: list[float]) -> float:
    """Median of the last quarter minus median of the second quarter (after warm-up)."""
    n = len(samples)
    if n < 8:
        return samples[-1] - samples[0] if samples else 0.0
    q = n // 4
    return statistics.median(samples[-q:]) - statistics.median(samples[q : 2 * q])


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| legs | CPU % of a core | tick p50 ms | tick p99 ms | tick CPU p99 ms | RSS start MB "
        "| RSS end MB "
        "| rows/s | ticks (missed) | simulator CPU % | position rows/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        sim = f"{r['sim_cpu_pct']:.1f}" if r["sim_cpu_pct"] is not None else "n/a"
        lines.append(
            f"| {size_label(r)} | {r['cpu_pct']:.2f} | {r['tick_p50']:.3f} | {r['tick_p99']:.3f} "
            f"| {r['tick_cpu_p99']:.3f} "
            f"| {r['rss'][0]:.1f} | {r['rss'][-1]:.1f} | {r['rows'] / r['window']:.2f} "
            f"| {r['ticks']} ({r['missed']}) | {sim} | {r['positions'] / r['window']:.2f} |"
        )
    return lines


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    series = [
        ("CPU, % of one core", "cpu_pct"),
        ("tick work p99, ms", "tick_p99"),
        ("RSS at the end, MB", "rss"),
    ]
    curves = [
        ("net rows only", "o", [r for r in results if not r["position_rows"]]),
        ("+ per-position rows", "s", [r for r in results if r["position_rows"]]),
    ]
    fig, axes = plt.subplots(1, len(series), figsize=(12, 3.8))
    for ax, (label, key) in zip(axes, series, strict=True):
        for name, marker, rs in curves:
            if not rs:
                continue
            legs = [r["legs"] for r in rs]
            values = [r[key][-1] if key == "rss" else r[key] for r in rs]
            ax.plot(legs, values, marker=marker, label=name, linestyle="-" if len(rs) > 1 else "")
            for x, y in zip(legs, values, strict=True):
                ax.annotate(
                    f"{y:.3g}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center"
                )
        ax.set_xscale("log")
        ax.set_xlabel("option legs")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
        if all(rs for _, _, rs in curves):
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="10,100,1000,1000p,5000",
        help="legs per size; p: per-position rows on (10,100,1000,1000p,5000)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="window per size (60)")
    parser.add_argument("--interval", type=float, default=5.0, help="BRIDGE_POLL_INTERVAL (5)")
    parser.add_argument(
        "--sim-tick-interval", type=float, default=1.0, help="simulator streaming (1)"
    )
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=300.0,
        help="IB_PROBE_INTERVAL (300: 5,000 legs keep ib_async's 45 requests/s queue busy ~2 min)",
    )
    parser.add_argument(
        "--plot", default=str(DEFAULT_PLOT), help="PNG to draw, or none (docs/scaling.png)"
    )
    parser.add_argument("--hour", action="store_true", help="also: RSS over an accelerated hour")
    parser.add_argument("--hour-seconds", type=float, default=120.0, help="its window (120)")
    parser.add_argument("--hour-legs", type=int, default=1000, help="its book (1000)")
    parser.add_argument(
        "--dynamic-mmap-threshold",
        action="store_true",
        help="diagnostic: leave glibc's dynamic mmap threshold (as before ibkr_bridge.ops.malloc)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=400.0, help="seconds to the first row"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--legs", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--position-rows", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.child:
        return asyncio.run(child(args))
    sizes = parse_sizes(args.sizes)
    draw = args.plot.lower() != "none"
    if draw:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"error: {INSTALL_HINT}", file=sys.stderr)
            return 2
    results = []
    for legs, position_rows in sizes:
        r = run_child(
            legs,
            args.seconds,
            args.interval,
            args.sim_tick_interval,
            args,
            position_rows=position_rows,
        )
        positions = f", {r['positions'] / r['window']:.2f} position rows/s" if position_rows else ""
        print(
            f"size {legs} legs{' with per-position rows' if position_rows else ''}: "
            f"{r['ticks']} ticks in {r['window']:.1f} s ({r['missed']} missed), "
            f"CPU {r['cpu_pct']:.2f} % of a core, tick p50 {r['tick_p50']:.3f} ms "
            f"p99 {r['tick_p99']:.3f} ms, RSS {r['rss'][0]:.1f} -> {r['rss'][-1]:.1f} MB, "
            f"{r['rows'] / r['window']:.2f} rows/s{positions}",
            flush=True,
        )
        results.append(r)
    print(
        f"scaling over {args.seconds:g} s per size, poll {args.interval:g} s, simulator ticks "
        f"every {args.sim_tick_interval:g} s:"
    )
    print("\n".join(table(results)), flush=True)
    if draw:
        title = (
            f"ibkr-bridge SOCKET mode, {args.seconds:g} s per size, poll {args.interval:g} s, "
            f"simulator streaming every {args.sim_tick_interval:g} s"
        )
        plot(results, Path(args.plot), title)
        print(f"plot: {args.plot}")
    problems = [p for r in results for p in r["problems"]]
    failed = [size_label(r) for r in results if r["returncode"] not in (0, 1)]
    if args.hour:
        h = run_child(args.hour_legs, args.hour_seconds, 0.1, 0.25, args)
        growth = rss_growth(h["rss"])
        verdict = "met" if growth <= RSS_GROWTH_LIMIT_MB else "NOT MET"
        print(
            f"accelerated hour, {h['legs']} legs, poll 0.1 s, simulator every 0.25 s, "
            f"{h['window']:.0f} s: {h['ticks']} ticks ({h['missed']} missed; "
            f"{h['ticks'] / 720:.2f} h of 5 s ticks), "
            f"RSS {h['rss'][0]:.1f} -> max {max(h['rss']):.1f} -> {h['rss'][-1]:.1f} MB, "
            f"growth {growth:+.2f} MB (last quarter vs second quarter; target <= "
            f"{RSS_GROWTH_LIMIT_MB:g}: {verdict}); CPU {h['cpu_pct']:.2f} %; "
            f"glibc mmap threshold {h['malloc']}"
        )
        problems += h["problems"]
    for problem in problems:
        print(f"INVALID: {problem}", file=sys.stderr)
    if failed:
        print(f"INVALID: children failed for {failed} legs", file=sys.stderr)
    return 1 if problems or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
