"""Soak: one simulated trading day and night per mode, with faults, checked row by row.

    python benchmarks/soak.py                          # SOCKET then PORTAL, 24 h each
    python benchmarks/soak.py --mode PORTAL --hours 2  # the short form CI runs

Each mode runs the real Bridge against its simulator (IB Gateway over the TWS API socket,
or the Client Portal gateway over HTTPS) and a real PostgreSQL (behind a TCP proxy that
produces the outages), on an injectable FakeClock: 17,280 ticks of 5 s compressed into a
few minutes. The world runs in a child process (``soak_child.py``); this parent owns the
database schema, kills the child with ``SIGKILL`` in the middle of the buffer drain that
follows the long database outage, starts a second child that resumes at the same simulated
instant with the same buffer and database, and then checks everything:

* rows: every row of a tick the child saw become durable is in ``portfolio_greeks``; no row
  appears that was never submitted (rows in flight at the kill may or may not be there);
* duplicates (``bridge_key``; ``contract, timestamp``) and order (ids follow timestamps);
* gaps: every interval without rows is covered by the non-LIVE, stale or skipped episodes
  ``api_logs`` records (each widened by one poll interval);
* events: every ``api_logs`` event the Bridge emitted (its event callback, transitions
  included) is in the table, and nothing else is;
* the buffer is empty at the end, nothing was quarantined (a torn line after the kill is
  explained) or refused;
* Greeks: every row equals an independent Black-Scholes recomputation from the journalled
  valuation inputs (spot after each price step, positions) at one instant at most 10 s
  before the row (the SOCKET simulator streams every 5 s; the PORTAL feed polls every 2 s
  and drops data older than 6 s); NULL Greeks only inside a scheduled sentinel episode;
* cadence drift: each row's distance from ``LIVE start + k * 5 s``.

It also measures, in simulated seconds from ``api_logs``: database recovery to empty
buffer, and gateway return to LIVE and to the first row. Exit status 1 on any violation.
Uses ``--dsn``, else ``IBKR_BRIDGE_TEST_DSN``/``DATABASE_URL``/127.0.0.1:5432, else an
embedded PostgreSQL; works in a private schema it drops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from asyncio.subprocess import PIPE
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import attrs
from soak_child import (
    NY,
    POLL,
    PROBE_INTERVAL,
    ChildConfig,
    schedule,
    soak_start,
)

from ibkr_bridge.sim import single_underlying_portfolio
from ibkr_bridge.sim.portfolio import SPY_CONID, Instrument
from ibkr_bridge.testing import TestDatabase, find_postgres, stop_embedded_postgres

CHILD: Final = Path(__file__).with_name("soak_child.py")
ROW_COLUMNS: Final = {
    "id": "id",
    "ts": "timestamp",
    "contract": "contract",
    **{name: name for name in ("delta", "gamma", "vega", "theta", "legs", "legs_missing")},
    "key": "bridge_key",
}
EVENT_COLUMNS: Final = {
    "id": "id",
    "ts": "timestamp",
    "event": "event",
    "machine": "machine",
    "src": "source_state",
    "dst": "dest_state",
    "key": "bridge_key",
    "message": "message",
}
ROOT: Final = Path(__file__).resolve().parents[1]
GREEKS: Final = ("delta", "gamma", "vega", "theta")
WINDOW: Final = 10  # seconds: how old a row's valuation instant may be
POSITIONS_LAG: Final = 65.0  # the PORTAL feed re-reads positions every 60 s
REL: Final = 1e-9
GATEWAY_FAULTS: Final = frozenset(
    {
        "gateway_restart",
        "client_id_in_use",
        "competing",
        "gateway_freeze",
        "garbage",
        "nightly_reset",
        "daily_reset",
        "expire_session",
        "rate_limit_storm",
        "slow",
    }
)
# While the gateway is frozen or garbled, SOCKET rows repeat the last Greeks received until
# the probe notices: within two probe intervals (traffic since the previous probe counts as
# proof of life). Such rows may be that much older.
UNRESPONSIVE: Final = frozenset({"gateway_freeze", "garbage"})
UNRESPONSIVE_GRACE: Final = 2 * PROBE_INTERVAL + POLL


# -- what was observed ------------------------------------------------------------------


@attrs.frozen
class Row:
    """One ``portfolio_greeks`` row."""

    id: int
    ts: datetime
    contract: str
    delta: float | None
    gamma: float | None
    vega: float | None
    theta: float | None
    legs: int
    legs_missing: int
    key: str


@attrs.frozen
class Event:
    """One ``api_logs`` row."""

    id: int
    ts: datetime
    event: str
    machine: str | None
    src: str | None
    dst: str | None
    trigger: str | None
    key: str
    message: str = ""
    detail: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Submitted:
    """A row the Bridge handed to its writer (from the child's row callback)."""

    ts: datetime
    key: str
    contract: str
    durable: bool
    child: int


@attrs.frozen
class Seen:
    """An event the Bridge emitted (from the child's event callback)."""

    ts: datetime
    key: str
    event: str
    machine: str | None
    src: str | None
    dst: str | None
    durable: bool
    child: int
    real: float


@attrs.frozen
class FaultMark:
    """A journalled fault phase: start, end, cut (db_cut), never_cut."""

    name: str
    phase: str
    at: float
    end: float
    ts: datetime
    params: Mapping[str, Any]
    child: int


@attrs.define
class Observed:
    """Everything the children journalled, merged."""

    start: datetime
    end: datetime
    submitted: list[Submitted] = attrs.field(factory=list)
    seen: list[Seen] = attrs.field(factory=list)
    spots: list[tuple[datetime, float]] = attrs.field(factory=list)
    positions: list[tuple[datetime, dict[int, float]]] = attrs.field(factory=list)
    faults: list[FaultMark] = attrs.field(factory=list)
    buffer_empty: list[tuple[datetime, float, int]] = attrs.field(factory=list)
    child_start: dict[int, tuple[datetime, float]] = attrs.field(factory=dict)
    ticks: int = 0
    skipped_ticks: int = 0
    stalls: int = 0
    killed: bool = False


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def load_journal(obs: Observed, path: Path, child: int) -> None:
    """Merge one child's journal into ``obs``: lines before its last ``durable`` mark are
    durable (the child flushed the writer after them)."""
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
    last_durable = max((i for i, x in enumerate(lines) if x["k"] == "durable"), default=-1)
    for i, x in enumerate(lines):
        kind = x["k"]
        durable = i < last_durable
        if kind == "rows":
            for key, contract in zip(x["keys"], x["contracts"], strict=True):
                obs.submitted.append(Submitted(_ts(x["ts"]), key, contract, durable, child))
        elif kind == "event":
            obs.seen.append(
                Seen(
                    ts=_ts(x["ts"]),
                    key=x["key"],
                    event=x["event"],
                    machine=x["machine"],
                    src=x["src"],
                    dst=x["dst"],
                    durable=durable,
                    child=child,
                    real=x["real"],
                )
            )
        elif kind == "tick":
            obs.ticks += 1
            obs.skipped_ticks += x["rows"] == 0
        elif kind == "spot":
            obs.spots.append((_ts(x["ts"]), float(x["spots"][str(SPY_CONID)])))
        elif kind == "positions":
            held = {int(c): float(q) for c, q in x["positions"].items()}
            obs.positions.append((_ts(x["ts"]), held))
        elif kind == "fault":
            obs.faults.append(
                FaultMark(
                    x["name"], x["phase"], x["at"], x["end"], _ts(x["ts"]), x["params"], child
                )
            )
        elif kind == "buffer_empty":
            obs.buffer_empty.append((_ts(x["ts"]), x["real"], child))
        elif kind == "start":
            obs.child_start[child] = (_ts(x["ts"]), x["real"])
        elif kind == "stall":
            obs.stalls += 1
    obs.spots.sort(key=lambda s: s[0])
    obs.positions.sort(key=lambda p: p[0])


# -- checks -----------------------------------------------------------------------------


@attrs.define
class Report:
    """Figures (printed in order) and violations of one mode."""

    mode: str
    figures: list[tuple[str, str]] = attrs.field(factory=list)
    violations: list[str] = attrs.field(factory=list)

    def add(self, name: str, value: str) -> None:
        self.figures.append((name, value))

    def fail(self, message: str) -> None:
        self.violations.append(message)


def _et(when: datetime) -> str:
    return when.astimezone(NY).strftime("%m-%d %H:%M:%S")


def _few(items: Iterable[Any], n: int = 5) -> str:
    shown = list(items)
    more = f" (+{len(shown) - n} more)" if len(shown) > n else ""
    return ", ".join(str(s) for s in shown[:n]) + more


def check_rows(obs: Observed, rows: Sequence[Row], report: Report) -> None:
    """Rows expected (durable ticks) against rows written; duplicates; order."""
    durable = {s.key for s in obs.submitted if s.durable}
    in_flight = {s.key for s in obs.submitted if not s.durable} - durable
    written = [r.key for r in rows]
    written_set = set(written)
    missing = sorted(
        (s.ts, s.contract) for s in obs.submitted if s.durable and s.key not in written_set
    )
    unknown = sorted(r.ts for r in rows if r.key not in durable and r.key not in in_flight)
    late = len(in_flight & written_set)
    report.add(
        "rows",
        f"{len(durable):,} expected (submitted and durable), {len(written_set & durable):,} "
        f"written; {len(in_flight)} in flight at the kill ({late} of them written); "
        f"missing {len(missing)}, never submitted {len(unknown)}",
    )
    report.add(
        "ticks",
        f"{obs.ticks:,} writer ticks while LIVE: {obs.ticks - obs.skipped_ticks:,} with rows, "
        f"{obs.skipped_ticks:,} skipped",
    )
    for ts, contract in missing[:20]:
        report.fail(f"row lost: {contract} at {_et(ts)} ET was durable but is not in the table")
    if len(missing) > 20:
        report.fail(f"... and {len(missing) - 20} more lost rows")
    if unknown:
        report.fail(f"{len(unknown)} rows in the table were never submitted: {_few(unknown)}")
    if not durable:
        report.fail("no row was written at all")
    dup_keys = [k for k, n in Counter(written).items() if n > 1]
    dup_slots = [s for s, n in Counter((r.contract, r.ts) for r in rows).items() if n > 1]
    report.add("duplicates", f"bridge_key {len(dup_keys)}, (contract, timestamp) {len(dup_slots)}")
    if dup_keys:
        report.fail(f"{len(dup_keys)} duplicated bridge_key values: {_few(dup_keys)}")
    if dup_slots:
        report.fail(f"{len(dup_slots)} duplicated (contract, timestamp): {_few(dup_slots)}")
    by_contract: dict[str, list[Row]] = {}
    for r in sorted(rows, key=lambda r: r.id):
        by_contract.setdefault(r.contract, []).append(r)
    disorder = [
        (a.ts, b.ts)
        for seq in by_contract.values()
        for a, b in itertools.pairwise(seq)
        if b.ts <= a.ts
    ]
    report.add("order", f"{len(disorder)} rows whose id does not follow their timestamp")
    if disorder:
        report.fail(f"{len(disorder)} rows out of order: {_few(disorder)}")


@attrs.frozen
class Episode:
    """An interval in which the Bridge, by its own api_logs, was not writing."""

    kind: str
    start: datetime
    end: datetime | None  # None: never ended


def quiet_episodes(events: Sequence[Event]) -> list[Episode]:
    """Non-LIVE, stale and skipped episodes, from the api_logs events alone."""
    out: list[Episode] = []
    nonlive: datetime | None = None
    stale: datetime | None = None
    skipped: datetime | None = None

    def close_all(at: datetime) -> None:
        nonlocal stale, skipped
        if stale is not None:
            out.append(Episode("stale", stale, at))
            stale = None
        if skipped is not None:
            out.append(Episode("skipped", skipped, at))
            skipped = None

    for e in sorted(events, key=lambda e: (e.ts, e.id)):
        if e.event == "startup":
            # A (re)started bridge: whatever the previous process was doing ended here.
            close_all(e.ts)
            if nonlive is None:
                nonlive = e.ts
        elif e.event == "transition" and e.machine == "connection":
            if e.dst == "LIVE" and e.src != "LIVE":
                if nonlive is not None:
                    out.append(Episode("not LIVE", nonlive, e.ts))
                nonlive = None
            elif e.src == "LIVE" and e.dst != "LIVE":
                close_all(e.ts)
                nonlive = e.ts
            elif e.trigger == "data_lost" and stale is None:
                stale = e.ts
            elif e.trigger == "data_restored" and stale is not None:
                out.append(Episode("stale", stale, e.ts))
                stale = None
        elif e.event == "skipped" and skipped is None:
            skipped = e.ts
        elif e.event == "resumed" and skipped is not None:
            out.append(Episode("skipped", skipped, e.ts))
            skipped = None
        elif e.event == "missed_ticks":
            out.append(Episode("missed ticks", e.ts, e.ts))
    for kind, begun in (("not LIVE", nonlive), ("stale", stale), ("skipped", skipped)):
        if begun is not None:
            out.append(Episode(kind, begun, None))
    return out


def check_gaps(obs: Observed, rows: Sequence[Row], events: Sequence[Event], report: Report) -> None:
    """Every interval without PORTFOLIO rows must be covered by episodes api_logs records,
    each widened by one poll interval (the last row may precede an episode by up to one
    tick, the first row after LIVE comes one tick after it)."""
    stamps = sorted(r.ts for r in rows if r.contract == "PORTFOLIO")
    episodes = quiet_episodes(events)
    slack = timedelta(seconds=POLL)
    covers = sorted((e.start - slack, e.end + slack if e.end else obs.end) for e in episodes)
    bounds = [obs.start, *stamps, obs.end]
    gaps = [(a, b) for a, b in itertools.pairwise(bounds) if (b - a).total_seconds() > POLL]
    unexplained = []
    for a, b in gaps:
        reached = a  # how far from a the covering episodes reach without a hole
        for lo, hi in covers:
            if lo <= reached < hi:
                reached = hi
        if reached < b:
            unexplained.append((reached, b))
    total = sum((b - a).total_seconds() for a, b in gaps)
    kinds = Counter(e.kind for e in episodes)
    report.add(
        "gaps",
        f"{len(gaps)} intervals without rows ({total / 60:.1f} simulated minutes), "
        f"{len(unexplained)} not covered by api_logs episodes: "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
    )
    for a, b in unexplained:
        report.fail(f"no row from {_et(a)} to {_et(b)} ET and nothing in api_logs explains it")


def check_events(obs: Observed, events: Sequence[Event], report: Report) -> None:
    """Every event seen through the event callback is in api_logs, and nothing else is."""
    logged = {e.key for e in events}
    seen = {s.key for s in obs.seen}
    lost = [s for s in obs.seen if s.durable and s.key not in logged]
    in_flight = [s for s in obs.seen if not s.durable]
    unknown = [e for e in events if e.key not in seen]
    transitions = [s for s in obs.seen if s.event == "transition"]
    logged_transitions = [s for s in transitions if s.key in logged]
    report.add(
        "events",
        f"{len(transitions)} transitions seen, {len(logged_transitions)} in api_logs; "
        f"{len(obs.seen)} events seen, {len(seen & logged)} in api_logs, "
        f"{len(in_flight)} in flight at the kill, lost {len(lost)}, unknown {len(unknown)}",
    )
    for s in lost[:20]:
        report.fail(f"event lost: {s.event} {s.machine or ''} {s.src}->{s.dst} at {_et(s.ts)}")
    if unknown:
        report.fail(
            f"{len(unknown)} api_logs rows no callback saw: {_few(e.event for e in unknown)}"
        )


def check_files(workdir: Path, report: Report, killed: bool) -> None:
    """Buffer empty, nothing quarantined (a torn line after a kill is explained) or refused."""
    data = workdir / "buffer.jsonl"
    pending = pending_bytes(data)
    report.add("buffer", "empty" if pending == 0 else f"{pending} bytes still pending")
    if pending:
        report.fail(f"the buffer still holds {pending} bytes at the end")
    quarantine = data.with_name(data.name + ".quarantine")
    entries = _json_lines(quarantine)
    torn = [q for q in entries if q.get("kind") == "torn"]
    unexplained = [q for q in entries if not (killed and q.get("kind") == "torn")]
    report.add(
        "quarantine",
        "empty" if not entries else f"{len(entries)} lines ({len(torn)} torn by the kill)",
    )
    for q in unexplained:
        report.fail(f"quarantined line not explained by the kill: {q.get('kind')} {q.get('error')}")
    rejected = _json_lines(data.with_name(data.name + ".rejected"))
    if rejected:
        report.fail(f"PostgreSQL refused {len(rejected)} records as data: {rejected[0]}")


def _json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def pending_bytes(data: Path) -> int:
    """Bytes of the buffer's data file not yet committed, read from its files directly."""
    if not data.exists():
        return 0
    raw = data.read_bytes()
    header_end = raw.find(b"\n") + 1
    offset = header_end
    cursor = data.with_name(data.name + ".cursor")
    if cursor.exists():
        try:
            saved = json.loads(cursor.read_text(encoding="utf-8"))
            header = json.loads(raw[:header_end])
            if saved.get("file_id") == header.get("file_id"):
                offset = max(header_end, int(saved["offset"]))
        except (ValueError, KeyError, TypeError):
            pass
    return max(0, len(raw) - offset)


# -- Greeks -----------------------------------------------------------------------------


def _ncdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def bs_greeks(
    spot: float, strike: float, years: float, vol: float, rate: float, call: bool
) -> tuple[float, float, float, float]:
    """(delta, gamma, vega per vol point, theta per day), written independently of the
    simulators' own Black-Scholes."""
    root = math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + vol * vol / 2.0) * years) / (vol * root)
    d2 = d1 - vol * root
    density = math.exp(-d1 * d1 / 2.0) / math.sqrt(2.0 * math.pi)
    carry = rate * strike * math.exp(-rate * years)
    decay = -spot * density * vol / (2.0 * root)
    if call:
        delta, theta = _ncdf(d1), decay - carry * _ncdf(d2)
    else:
        delta, theta = _ncdf(d1) - 1.0, decay + carry * _ncdf(-d2)
    return delta, density / (spot * vol * root), spot * density * root / 100.0, theta / 365.0


class Valuation:
    """Net Greeks of the soak book at an instant, from journalled spot and positions."""

    def __init__(self, start: datetime) -> None:
        book = single_underlying_portfolio(as_of=start)
        self.instruments: dict[int, Instrument] = {i.conid: i for i in book.instruments()}
        self.vol = book.volatility(SPY_CONID)
        self.rate = book.rate

    def net(self, at: datetime, spot: float, held: Mapping[int, float]) -> dict[str, float]:
        total = dict.fromkeys(GREEKS, 0.0)
        for conid, quantity in held.items():
            inst = self.instruments[conid]
            if not inst.is_option:
                total["delta"] += quantity * (inst.multiplier if inst.sec_type == "FUT" else 1.0)
                continue
            expires = inst.expires_at()
            assert expires is not None
            assert inst.strike is not None
            years = (expires - at).total_seconds() / (365.0 * 86400.0)
            g = bs_greeks(spot, inst.strike, years, self.vol, self.rate, inst.right == "C")
            for name, value in zip(GREEKS, g, strict=True):
                total[name] += quantity * inst.multiplier * value
        return total


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=REL)


class Inputs:
    """The journalled valuation inputs, indexed by time."""

    def __init__(self, obs: Observed) -> None:
        self.spots = obs.spots
        self.spot_times = [s[0] for s in obs.spots]
        self.positions = obs.positions
        self.position_times = [p[0] for p in obs.positions]

    def spots_at(self, at: datetime) -> list[float]:
        """The spot just after and just before a price step at ``at`` (one if none)."""
        out: list[float] = []
        upto = bisect.bisect_right(self.spot_times, at) - 1
        before = bisect.bisect_left(self.spot_times, at) - 1
        for i in (upto, before):
            if i >= 0 and self.spots[i][1] not in out:
                out.append(self.spots[i][1])
        return out

    def positions_at(self, at: datetime) -> list[dict[int, float]]:
        """Position states in effect at some time in [at - POSITIONS_LAG, at], newest first."""
        earliest = at - timedelta(seconds=POSITIONS_LAG)
        lo = max(0, bisect.bisect_right(self.position_times, earliest) - 1)
        hi = bisect.bisect_right(self.position_times, at) - 1
        return [self.positions[i][1] for i in range(hi, lo - 1, -1)]


def _episodes(obs: Observed, names: frozenset[str]) -> list[tuple[datetime, datetime, FaultMark]]:
    out = []
    for f in obs.faults:
        if f.phase == "start" and f.name in names:
            out.append((f.ts, f.ts + timedelta(seconds=f.end - f.at), f))
    return out


def check_greeks(obs: Observed, rows: Sequence[Row], report: Report) -> None:
    """Each row equals the recomputation at one instant within the window before it."""
    valuation = Valuation(obs.start)
    inputs = Inputs(obs)
    sentinels = _episodes(obs, frozenset({"sentinel"}))
    unresponsive = _episodes(obs, UNRESPONSIVE)
    matched = all_missing = 0
    ages: Counter[int] = Counter()
    bad: list[str] = []
    for r in rows:
        present = {n: getattr(r, n) for n in GREEKS if getattr(r, n) is not None}
        in_sentinel = any(a <= r.ts <= b + timedelta(seconds=WINDOW) for a, b, _ in sentinels)
        if len(present) < len(GREEKS) and not in_sentinel:
            bad.append(f"{_et(r.ts)}: NULL Greeks outside a sentinel episode ({r})")
            continue
        if (len(present) < len(GREEKS)) != (r.legs_missing > 0):
            bad.append(f"{_et(r.ts)}: legs_missing {r.legs_missing} with NULLs {sorted(present)}")
            continue
        if not present:
            all_missing += 1
            continue
        oldest = WINDOW
        for a, b, _ in unresponsive:
            if a <= r.ts <= b + timedelta(seconds=UNRESPONSIVE_GRACE):
                oldest = max(oldest, int((r.ts - a).total_seconds()) + WINDOW)
        age = _match_age(inputs, valuation, r.ts, present, oldest)
        if age is not None:
            matched += 1
            ages[age] += 1
        else:
            bad.append(f"{_et(r.ts)}: {present} equals no recomputation within {oldest} s")
    stale_rows = sum(n for a, n in ages.items() if a > WINDOW)
    report.add(
        "greeks",
        f"{len(rows):,} rows: {matched - stale_rows:,} equal a recomputation (rel {REL:g}) at "
        f"one instant <= {WINDOW} s before the row; {stale_rows} at an older instant"
        + (f", up to {max(ages)} s" if stale_rows else "")
        + " (written from a frozen or garbled gateway before the probe noticed); "
        f"{all_missing} with every Greek NULL (sentinels); {len(bad)} wrong",
    )
    for message in bad[:20]:
        report.fail(f"Greeks: {message}")
    if len(bad) > 20:
        report.fail(f"... and {len(bad) - 20} more rows with wrong Greeks")


def _match_age(
    inputs: Inputs,
    valuation: Valuation,
    ts: datetime,
    present: Mapping[str, float],
    oldest: int,
) -> int | None:
    """Seconds before ``ts`` of an instant whose recomputation equals ``present``."""
    for age in range(oldest + 1):
        at = ts - timedelta(seconds=age)
        for held in inputs.positions_at(at):
            for spot in inputs.spots_at(at):
                want = valuation.net(at, spot, held)
                if all(_close(v, want[n]) for n, v in present.items()):
                    return age
    return None


# -- cadence and timings ----------------------------------------------------------------


def check_drift(obs: Observed, rows: Sequence[Row], report: Report) -> None:
    """Distance of each row from ``LIVE start + k * 5 s`` of its LIVE episode (the writer
    starts its schedule on entering LIVE), per bridge process."""
    child_of = {s.key: s.child for s in obs.submitted}
    starts: dict[int, list[datetime]] = {}
    for s in obs.seen:
        if s.event == "transition" and s.dst == "LIVE" and s.src != "LIVE":
            starts.setdefault(s.child, []).append(s.ts)
    for lives in starts.values():
        lives.sort()
    worst = 0.0
    early = 0
    for r in rows:
        lives = starts.get(child_of.get(r.key, -1), [])
        i = bisect.bisect_right(lives, r.ts) - 1
        if i < 0:
            early += 1
            continue
        elapsed = (r.ts - lives[i]).total_seconds()
        k = round(elapsed / POLL)
        early += k < 1
        worst = max(worst, abs(elapsed - k * POLL))
    episodes = sum(len(v) for v in starts.values())
    report.add(
        "drift", f"max |row - (LIVE start + k*5 s)| = {worst:.6f} s over {episodes} LIVE episodes"
    )
    if worst > 1e-6:
        report.fail(f"cadence drift {worst:.6f} s")
    if early:
        report.fail(f"{early} rows not at least one interval after their LIVE start")


def measure_outages(obs: Observed, events: Sequence[Event], report: Report) -> None:
    """Database recovery (proxy up) to empty buffer, in simulated seconds."""
    breaker = sorted(
        (e for e in events if e.event == "transition" and e.machine == "breaker"),
        key=lambda e: (e.ts, e.id),
    )
    starts = {f.name: f for f in obs.faults if f.phase == "start" and f.name.startswith("db_")}
    ends = {f.name: f for f in obs.faults if f.phase == "end" and f.name.startswith("db_")}
    cuts = {f.name: f for f in obs.faults if f.phase == "cut"}
    for name, begun in sorted(starts.items(), key=lambda kv: kv[1].at):
        ended = ends.get(name)
        if ended is None:
            report.fail(f"{name}: never ended")
            continue
        began_at = cuts[name].ts if name in cuts else begun.ts
        opened = next((e for e in breaker if e.dst == "OPEN" and e.ts >= began_at), None)
        closed = next(
            (e for e in breaker if e.dst == "CLOSED" and e.src == "HALF_OPEN" and e.ts >= ended.ts),
            None,
        )
        empty = next((b for b in obs.buffer_empty if b[0] >= ended.ts), None)
        length = (ended.ts - begun.ts).total_seconds()
        text = f"{length / 60:.0f} min from {_et(begun.ts)} ET"
        if opened is not None:
            error = str(opened.detail.get("error", ""))[:90]
            text += f"; breaker OPEN +{(opened.ts - began_at).total_seconds():.0f} s ({error})"
        if name == "db_cut" and name not in cuts:
            report.fail("db_cut: the connection was never cut under a write")
        if begun.params.get("kill"):
            if empty is None:
                report.fail(f"{name}: the restarted bridge never emptied the buffer")
            else:
                text += (
                    f"; killed mid-drain, restarted bridge emptied the buffer "
                    f"{(empty[0] - ended.ts).total_seconds():.0f} s after recovery "
                    f"(drain {empty[1] - obs.child_start[empty[2]][1]:.2f} s real after its start)"
                )
        elif closed is None or empty is None:
            report.fail(f"{name}: the breaker never closed / buffer never emptied after recovery")
        else:
            probes = (s for s in obs.seen if s.machine == "breaker" and s.dst == "HALF_OPEN")
            probe = next((s for s in probes if s.ts >= ended.ts), None)
            real = f", drain {empty[1] - probe.real:.2f} s real" if probe is not None else ""
            text += (
                f"; recovery to empty buffer {(empty[0] - ended.ts).total_seconds():.0f} s "
                f"(breaker CLOSED +{(closed.ts - ended.ts).total_seconds():.0f} s{real})"
            )
        report.add(name, text)


def returns_at(fault: FaultMark, mode: str) -> float:
    """Offset at which the gateway is usable again after ``fault``."""
    if fault.name in ("expire_session",) or (fault.name == "nightly_reset" and mode == "PORTAL"):
        return fault.at
    return fault.end


def measure_gateway(
    obs: Observed, rows: Sequence[Row], events: Sequence[Event], mode: str, report: Report
) -> None:
    """Gateway back -> LIVE (reconnect) and -> first row, in simulated seconds."""
    conn = sorted(
        (e for e in events if e.event == "transition" and e.machine == "connection"),
        key=lambda e: (e.ts, e.id),
    )
    stamps = sorted(r.ts for r in rows if r.contract == "PORTFOLIO")
    starts = [f for f in obs.faults if f.phase == "start" and f.name in GATEWAY_FAULTS]
    for f in sorted(starts, key=lambda f: f.at):
        back = obs.start + timedelta(seconds=returns_at(f, mode))
        left = next((e for e in conn if e.src == "LIVE" and e.dst != "LIVE" and e.ts >= f.ts), None)
        if left is not None and (left.ts - back).total_seconds() > 120:
            left = None  # a later fault's disconnect: this one never left LIVE
        since = left.ts if left is not None else f.ts
        live = next((e for e in conn if e.dst == "LIVE" and e.ts >= since), None)
        # The first row written once the gateway is back (and the bridge LIVE again).
        i = bisect.bisect_left(stamps, max(back, live.ts) if left and live else back)
        first = stamps[i] if i < len(stamps) else None
        text = f"at {_et(f.ts)} ET, back {_et(back)}"
        if left is not None and live is not None:
            waited = [str(e.dst) for e in conn if left.ts <= e.ts <= live.ts and e.dst != "LIVE"]
            text += (
                f"; left LIVE for {' '.join(dict.fromkeys(waited))}, LIVE again "
                f"{(live.ts - back).total_seconds():+.0f} s"
            )
        else:
            text += "; stayed LIVE"
        if first is not None:
            text += f", first row {(first - back).total_seconds():+.0f} s"
        else:
            report.fail(f"{f.name} at {_et(f.ts)}: no row after the gateway returned")
        report.add(f"{f.name}", text)
        if f.name == "nightly_reset":
            _check_nightly(f, left, live, conn, report)


def _check_nightly(
    fault: FaultMark, left: Event | None, live: Event | None, conn: Sequence[Event], report: Report
) -> None:
    if left is None or live is None:
        report.fail("nightly reset: the bridge never left LIVE / never came back")
        return
    waits = [e for e in conn if e.dst == "RESET_WAIT" and left.ts <= e.ts <= live.ts]
    local = live.ts.astimezone(NY)
    if not waits or (local.hour, local.minute) != (0, 5):
        report.fail(
            f"nightly reset: expected RESET_WAIT until 00:05 ET, got LIVE at {_et(live.ts)} "
            f"with {len(waits)} RESET_WAIT transitions"
        )


def check_scenario(obs: Observed, mode: str, hours: float, report: Report) -> None:
    """Every scheduled fault was applied; the harness never had to give up waiting."""
    planned = Counter(f.name for f in schedule(mode, hours))
    applied = Counter(f.name for f in obs.faults if f.phase == "start")
    for name, n in planned.items():
        if applied[name] != n:
            report.fail(f"fault {name}: scheduled {n}, applied {applied[name]}")
    if obs.stalls:
        report.fail(f"the child waited {obs.stalls} times for over a minute of real IO")


# -- running the children ---------------------------------------------------------------


@attrs.define
class ChildRun:
    child: int
    real: float = 0.0
    killed_at: float | None = None
    returncode: int | None = None
    hung: bool = False


async def run_child(
    cfg: ChildConfig, workdir: Path, label: str, kill_on_middrain: bool
) -> ChildRun:
    """Run one child to its end (or kill it when it reports it is mid-drain)."""
    path = workdir / f"child-{cfg.child}.json"
    cfg.dump(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = ChildRun(cfg.child)
    with (workdir / f"child-{cfg.child}.stderr").open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), str(path), stdout=PIPE, stderr=stderr, env=env
        )
        began = time.perf_counter()
        assert proc.stdout is not None
        try:
            # A guard against a hung world, not a timing target: a simulated hour a minute.
            async with asyncio.timeout(max(600.0, cfg.hours * 60.0)):
                async for raw in proc.stdout:
                    word, *rest = raw.decode().split() or [""]
                    if word == "MIDDRAIN" and kill_on_middrain:
                        proc.send_signal(signal.SIGKILL)
                        run.killed_at = float(rest[0])
                        break
                    if word == "PROGRESS":
                        hours = float(rest[0]) / 3600
                        print(
                            f"  [{label}] {hours:4.1f} h simulated (child {cfg.child}: {rest[1]} s)"
                        )
                run.returncode = await proc.wait()
        except TimeoutError:
            run.hung = True
            proc.kill()
            run.returncode = await proc.wait()
        run.real = time.perf_counter() - began
    return run


def last_spots(journal: Path) -> dict[str, float]:
    spots: dict[str, float] = {}
    for line in journal.read_text(encoding="utf-8").splitlines():
        x = json.loads(line)
        if x["k"] == "spot":
            spots = x["spots"]
    return spots


async def fetch(db: TestDatabase) -> tuple[list[Row], list[Event]]:
    raw_rows = await db.fetch("SELECT * FROM portfolio_greeks ORDER BY id")
    raw_events = await db.fetch("SELECT * FROM api_logs ORDER BY id")
    rows = [Row(**{name: r[column] for name, column in ROW_COLUMNS.items()}) for r in raw_rows]
    events = []
    for e in raw_events:
        detail = json.loads(e["detail"]) if isinstance(e["detail"], str) else dict(e["detail"])
        fields = {name: e[column] for name, column in EVENT_COLUMNS.items()}
        events.append(Event(**fields, trigger=detail.get("trigger"), detail=detail))
    return rows, events


def _fresh_dir(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return not any(path.iterdir())


async def soak_mode(mode: str, hours: float, server: str, workdir: Path) -> Report:
    report = Report(mode)
    if not await asyncio.to_thread(_fresh_dir, workdir):
        # A buffer or journal left by another run would be drained and counted as ours.
        raise SystemExit(f"{workdir} is not empty: give a fresh --workdir")
    start = soak_start(hours)
    end = start + timedelta(seconds=hours * 3600)
    began = time.perf_counter()
    async with TestDatabase.create(server) as db:
        base = ChildConfig(mode, hours, server, db.schema, str(workdir), child=1)
        first = await run_child(base, workdir, mode, kill_on_middrain=True)
        runs = [first]
        killed = first.killed_at is not None
        if killed:
            assert first.killed_at is not None
            left = pending_bytes(workdir / "buffer.jsonl")
            report.add(
                "kill -9",
                f"at {_et(start + timedelta(seconds=first.killed_at))} ET mid-drain: "
                f"{left:,} bytes left in the buffer",
            )
            if left == 0:
                report.fail("the kill -9 landed after the drain had finished")
            resumed = attrs.evolve(
                base,
                child=2,
                start_offset=first.killed_at,
                spots=last_spots(workdir / "journal-1.jsonl"),
            )
            runs.append(await run_child(resumed, workdir, mode, kill_on_middrain=False))
        else:
            report.fail("the child never reached the mid-drain kill point")
        rows, events = await fetch(db)
    real = time.perf_counter() - began
    for run in runs:
        expected = -signal.SIGKILL if run.killed_at is not None else 0
        if run.hung:
            report.fail(f"child {run.child} hung and was killed after {run.real:.0f} s")
        elif run.returncode != expected:
            report.fail(f"child {run.child} exited with {run.returncode} (see {workdir})")
    obs = Observed(start, end, killed=killed)
    for run in runs:
        journal = workdir / f"journal-{run.child}.jsonl"
        if journal.exists():
            load_journal(obs, journal, run.child)
    report.add(
        "simulated",
        f"{hours:g} h, {_et(start)} ET to {_et(end)} ET; real {real:.1f} s "
        f"(" + ", ".join(f"child {r.child} {r.real:.1f} s" for r in runs) + ")",
    )
    check_rows(obs, rows, report)
    check_gaps(obs, rows, events, report)
    check_events(obs, events, report)
    check_files(workdir, report, killed)
    check_greeks(obs, rows, report)
    check_drift(obs, rows, report)
    measure_outages(obs, events, report)
    measure_gateway(obs, rows, events, mode, report)
    check_scenario(obs, mode, hours, report)
    return report


def print_report(report: Report) -> None:
    print(f"[{report.mode}]")
    width = max(len(name) for name, _ in report.figures)
    for name, value in report.figures:
        print(f"  {name:<{width}}  {value}")
    print(f"  {'violations':<{width}}  {len(report.violations)}")
    for v in report.violations:
        print(f"    - {v}")


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=("SOCKET", "PORTAL", "both"), default="both")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--dsn", help="PostgreSQL server to use (default: discover one)")
    parser.add_argument("--workdir", type=Path, help="keep journals and buffer files here")
    args = parser.parse_args(argv)
    if args.hours < 2:
        parser.error("--hours must be at least 2 (the run spans the nightly reset window)")
    modes = ("SOCKET", "PORTAL") if args.mode == "both" else (args.mode,)
    server = args.dsn or await find_postgres()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ibkr-soak-"))
    reports = []
    try:
        for mode in modes:
            print(f"[{mode}] soaking {args.hours:g} simulated hours ...", flush=True)
            report = await soak_mode(mode, args.hours, server, root / mode.lower())
            print_report(report)
            reports.append(report)
    finally:
        stop_embedded_postgres()
    failed = sum(len(r.violations) for r in reports)
    if failed and args.workdir is None:
        print(f"journals, logs and buffer files kept in {root}")
    elif args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    print("OK: no violation" if not failed else f"FAILED: {failed} violations")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))


__all__ = [
    "Event",
    "FaultMark",
    "Observed",
    "Report",
    "Row",
    "Seen",
    "Submitted",
    "bs_greeks",
    "check_drift",
    "check_events",
    "check_gaps",
    "check_greeks",
    "check_rows",
    "quiet_episodes",
]
