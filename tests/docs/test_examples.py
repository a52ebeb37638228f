"""What the documentation promises, checked against the real thing.

- ``examples/embed.py`` runs as a subprocess against the IB Gateway simulator and the test's
  private schema, prints the rows it received, and those rows are the ones in the database.
- ``examples/ibkr-bridge.service`` has the keys docs/operations.md explains, and no secret.
- Every page in the ``mkdocs.yml`` nav exists, and every page in docs/ is in the nav.
- The SQL queries of docs/operations.md run and find what they claim to find.
- The ``recover.py`` script of docs/operations.md recovers a really quarantined and a really
  rejected record, refuses to write while a line is bad, and can be run twice.
- With the ``docs`` extra installed, ``mkdocs build --strict`` passes.

Subprocesses get an environment without the shell's IB_/IBKR_/BRIDGE_/PG*/DATABASE_URL
variables and run in a temporary directory, so no ``.env`` is read by accident.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from ibkr_bridge import ApiEvent, GreeksRow
from ibkr_bridge.core.records import Record, record_to_json
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.drain import drain_buffer
from ibkr_bridge.storage.schema import apply_bridge_schema, legacy_underlying_rows
from ibkr_bridge.storage.sink import DurableWriter
from ibkr_bridge.storage.store import Store
from ibkr_bridge.testing import TestDatabase

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
UNIT = ROOT / "examples" / "ibkr-bridge.service"
OPERATIONS = DOCS / "operations.md"
SUBPROCESS_TIMEOUT = 120.0  # a cap for a hung child, not a timing claim


@attrs.frozen
class Done:
    code: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    ours = ("IB_", "IBKR_", "BRIDGE_", "PG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours) and k != "DATABASE_URL"}
    env.update(extra)
    return env


async def run(args: Sequence[str], *, env: dict[str, str], cwd: Path) -> Done:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SUBPROCESS_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


def fenced_blocks(path: Path, lang: str) -> list[tuple[str, str]]:
    """(info string, body) of each fenced block of ``lang`` in a Markdown page."""
    found = re.findall(
        rf"^```{lang}([^\n]*)\n(.*?)^```\s*$", path.read_text(encoding="utf-8"), re.M | re.S
    )
    return [(info.strip(), body) for info, body in found]


# -- examples/embed.py --------------------------------------------------------------------


async def test_embed_example_prints_the_rows_it_stores(db: TestDatabase, tmp_path: Path) -> None:
    done = await run(
        [
            sys.executable,
            str(ROOT / "examples" / "embed.py"),
            *("--rows", "3", "--interval", "0.2", "--seconds", "60"),
        ],
        env=clean_env(DATABASE_URL=db.dsn),
        cwd=tmp_path,
    )
    assert done.code == 0, done.err
    printed = [line for line in done.out.splitlines() if line.startswith("row ")]
    assert len(printed) >= 3, done.out
    assert any(" PORTFOLIO " in line for line in printed)
    summary = re.search(
        r"^embed: (\d+) rows written, (\d+) events, final state STOPPED, breaker CLOSED$",
        done.out,
        re.M,
    )
    assert summary is not None, done.out
    assert int(summary[1]) == len(printed)
    # Every row the callback saw is in PostgreSQL, and nothing else.
    # PORTFOLIO rows in portfolio_greeks, the per-underlying ones in underlying_greeks.
    stored = await db.fetch("SELECT count(*) AS n FROM portfolio_greeks")
    assert stored[0]["n"] == sum(" PORTFOLIO " in line for line in printed)
    under = await db.fetch("SELECT count(*) AS n FROM underlying_greeks")
    assert under[0]["n"] == sum(" PORTFOLIO " not in line for line in printed)
    events = {r["event"] for r in await db.fetch("SELECT event FROM api_logs")}
    assert {"startup", "transition", "shutdown"} <= events


# -- examples/ibkr-bridge.service ---------------------------------------------------------


def unit_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a unit file line: {raw!r}"
        assert current is not None, f"a line before any [Section]: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def test_systemd_unit_has_the_documented_keys() -> None:
    sections = unit_sections(UNIT.read_text(encoding="utf-8"))
    assert set(sections) == {"Unit", "Service", "Install"}
    service = dict(sections["Service"])  # the last of repeated keys, as systemd reads them
    assert service["Restart"] == "always"
    assert service["User"] not in ("", "root", "0")
    env_file = service["EnvironmentFile"]
    assert env_file.startswith("/"), "required (no '-') and absolute"
    assert service["ExecStart"].startswith("/")
    assert service["ExecStart"].endswith("/ibkr-bridge run")
    assert service["StateDirectory"] == "ibkr-bridge"
    # Exits that need a person are not restarted; 1 (anything else) is.
    prevented = service["RestartPreventExitStatus"].split()
    assert {"2", "3", "4"} <= set(prevented)
    assert "1" not in prevented
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }
    assert {k: service.get(k) for k in hardening} == hardening
    assert dict(sections["Install"])["WantedBy"] == "multi-user.target"


def test_systemd_unit_holds_no_secret() -> None:
    sections = unit_sections(UNIT.read_text(encoding="utf-8"))
    secret_name = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE_URL|DSN", re.I)
    for key, value in (kv for entries in sections.values() for kv in entries):
        assert not re.search(r"://[^/\s:@]*:[^@\s]*@", value), f"credentials in {key}"
        if key == "Environment":
            assert not secret_name.search(value.partition("=")[0]), value


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # The unit's ExecStart is not installed here; everything else is checked as written.
    text = re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true run", UNIT.read_text(), flags=re.M)
    copy = tmp_path / "ibkr-bridge.service"
    copy.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ibkr-bridge.service" not in done.stderr, done.stderr


# -- mkdocs.yml ---------------------------------------------------------------------------


def nav_pages() -> list[str]:
    """The pages of the ``nav:`` block of mkdocs.yml (no YAML library needed)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    _, found, rest = text.partition("\nnav:\n")
    assert found, "mkdocs.yml has no nav"
    block: list[str] = []
    for line in rest.splitlines():
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    return re.findall(r":\s*(\S+\.md)\s*$", "\n".join(block), re.M)


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    pages = nav_pages()
    assert "index.md" in pages
    assert len(pages) == len(set(pages)), "a page is in the nav twice"
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"in the nav but not in docs/: {missing}"
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk, "a page in docs/ is not in the nav (mkdocs --strict fails)"


def test_included_files_exist() -> None:
    for page in DOCS.rglob("*.md"):
        for included in re.findall(r'^\s*--8<-- "([^"]+)"', page.read_text(), re.M):
            assert (ROOT / included).is_file(), f"{page.name} includes a missing {included}"


# -- docs/operations.md: the SQL ----------------------------------------------------------


def _history(base: datetime) -> list[Record]:
    """Rows with one 45 s gap, and the events of a reconnect and a database outage."""

    def at(seconds: float) -> datetime:
        return base + timedelta(seconds=seconds)

    def event(seconds: float, name: str, message: str, **kw: Any) -> ApiEvent:
        return ApiEvent(timestamp=at(seconds), api_mode="SOCKET", event=name, message=message, **kw)

    def move(seconds: float, machine: str, source: str, dest: str, **detail: Any) -> ApiEvent:
        return event(
            seconds,
            "transition",
            f"{machine} {source} -> {dest}",
            machine=machine,
            source_state=source,
            dest_state=dest,
            detail=detail,
        )

    rows: list[Record] = [
        GreeksRow(timestamp=at(s), account="U1", api_mode="SOCKET", delta=1.0)
        for s in (0, 5, 10, 15, 60, 65)
    ]
    rows += [
        GreeksRow(timestamp=at(s), account="U1", api_mode="SOCKET", contract=c, delta=0.5)
        for s in (60, 65)
        for c in ("ES", "SPY")
    ]
    events: list[Record] = [
        event(-1, "startup", "bridge starting in SOCKET mode"),
        move(20, "connection", "LIVE", "BACKOFF", trigger="disconnected", attempt=1, delay=5),
        event(25, "connect", "connecting, attempt 1", detail={"attempt": 1}),
        event(
            26,
            "error",
            "connect attempt 1 failed",
            status="error",
            detail={"attempt": 1, "outcome": "failed", "error": "refused"},
        ),
        move(30, "breaker", "CLOSED", "OPEN", trigger="failure", error="db down"),
        move(50, "breaker", "HALF_OPEN", "CLOSED", trigger="drained"),
        move(55, "connection", "CONNECTING", "LIVE", trigger="connected"),
        event(55, "reconnect", "connected", detail={"attempt": 2, "outcome": "connected"}),
    ]
    return rows + events


async def test_operations_queries_run_and_find_what_they_claim(db: TestDatabase) -> None:
    # Titled blocks are scripts (a migration, a table shape), tested on their own below.
    queries = [body for info, body in fenced_blocks(OPERATIONS, "sql") if "title=" not in info]
    assert len(queries) >= 5
    base = (datetime.now(UTC) - timedelta(minutes=10)).replace(microsecond=0)
    store = await Store.open(db.dsn)
    try:
        await store.ensure_schema()
        await store.write(_history(base))
    finally:
        await store.close()
    conn = await db.connect()
    try:
        for query in queries:
            found = await conn.fetch(query)
            assert found, f"no row from:\n{query}"
            if "lag(timestamp)" in query:  # the gap query
                assert [(r["gap_from"], r["gap_to"]) for r in found] == [
                    (base + timedelta(seconds=15), base + timedelta(seconds=60))
                ]
                assert "transition" in found[0]["events"]
                assert "reconnect" in found[0]["events"]
            if "dest_state = 'CLOSED'" in query:  # the outage query
                assert [(r["opened"], r["closed"]) for r in found] == [
                    (base + timedelta(seconds=30), base + timedelta(seconds=50))
                ]
            if "FROM underlying_greeks ORDER BY" in query:  # each underlying now
                assert [(r["contract"], r["timestamp"]) for r in found] == [
                    ("ES", base + timedelta(seconds=65)),
                    ("SPY", base + timedelta(seconds=65)),
                ]
            if "ORDER BY timestamp DESC LIMIT 1" in query:  # the portfolio now
                assert [r["contract"] for r in found] == ["PORTFOLIO"]
            if "JOIN underlying_greeks" in query:  # the latest tick's underlyings
                assert sorted(r["contract"] for r in found) == ["ES", "SPY"]
            if "'started'" in query:  # connect attempts
                outcomes = [r["outcome"] for r in found]
                assert outcomes == ["started", "failed", "connected"]
    finally:
        await conn.close()


async def test_operations_spec_005_upgrade_and_row_move_work_as_shown(db: TestDatabase) -> None:
    scripts = {info: body for info, body in fenced_blocks(OPERATIONS, "sql") if "title=" in info}
    conn = await db.connect()
    try:
        await conn.execute(scripts['title="spec-005 tables"'])
        await conn.execute("INSERT INTO portfolio_greeks (delta) VALUES (1.5)")
        await apply_bridge_schema(conn)
        # Rows an earlier version of this bridge wrote for an underlying, then the move.
        await conn.execute(
            "INSERT INTO portfolio_greeks (timestamp, contract, delta, bridge_key)"
            " VALUES (now(), 'SPY', 2.5, 'k1'), (now(), 'ES', 3.5, 'k2')"
        )
        assert await legacy_underlying_rows(conn) == 2
        # k1 also drained again after the upgrade (committed by the old version before a crash).
        await conn.execute(
            "INSERT INTO underlying_greeks (timestamp, contract, delta, bridge_key)"
            " VALUES (now(), 'SPY', 2.5, 'k1')"
        )
        for _ in range(2):  # the move is safe to run twice
            await conn.execute(scripts['title="moving per-underlying rows"'])
        kept = await conn.fetch("SELECT contract, delta FROM portfolio_greeks")
        assert [(r["contract"], r["delta"]) for r in kept] == [("PORTFOLIO", 1.5)]
        moved = await conn.fetch("SELECT contract, bridge_key FROM underlying_greeks ORDER BY id")
        assert [(r["contract"], r["bridge_key"]) for r in moved] == [("SPY", "k1"), ("ES", "k2")]
        assert await legacy_underlying_rows(conn) == 0
    finally:
        await conn.close()


# -- docs/operations.md: recover.py -------------------------------------------------------


def recover_script() -> str:
    scripts = [body for info, body in fenced_blocks(OPERATIONS, "python") if "recover.py" in info]
    assert len(scripts) == 1, "docs/operations.md should show recover.py once"
    return scripts[0]


async def set_aside(buffer_path: Path, store: Store) -> tuple[GreeksRow, GreeksRow]:
    """One record PostgreSQL rejects (a NUL byte) and one buffer line that gets quarantined."""
    now = datetime.now(UTC)
    refused = GreeksRow(timestamp=now, account="U1", api_mode="SOCKET", contract="SP\x00Y")
    torn_zone = GreeksRow(timestamp=now, account="U1", api_mode="SOCKET", contract="ES")
    buffer = JsonlBuffer(buffer_path)
    buffer.open()
    writer = DurableWriter(store, buffer, api_mode="SOCKET")
    await writer.start()
    good = GreeksRow(timestamp=now, account="U1", api_mode="SOCKET", delta=1.0)
    await writer.write([good, refused])  # refused as data: row by row, then .rejected
    await writer.stop()
    assert writer.stats.rejected == 1
    buffer.append([good])  # a data file with a header, then a line without its time zone
    naive = record_to_json(torn_zone).replace(now.isoformat(), now.replace(tzinfo=None).isoformat())
    with buffer_path.open("ab") as data:
        data.write(naive.encode() + b"\n")
    buffer.close()
    buffer.open()
    try:
        progress = await drain_buffer(buffer, store)
    finally:
        buffer.close()
    assert progress.quarantined == 1
    return refused, torn_zone


def fixed(lines: Iterator[str], refused: GreeksRow, torn_zone: GreeksRow) -> str:
    """What the operator does by hand: put the zone back, take the NUL out."""
    out = []
    for line in lines:
        if torn_zone.key in line:
            naive = torn_zone.timestamp.replace(tzinfo=None).isoformat()
            line = line.replace(naive, torn_zone.timestamp.isoformat())
        if refused.key in line:
            line = line.replace("\\u0000", "")
        out.append(line)
    return "\n".join(out) + "\n"


async def test_recover_script_puts_set_aside_records_back(db: TestDatabase, tmp_path: Path) -> None:
    script = tmp_path / "recover.py"
    script.write_text(recover_script())
    buffer_path = tmp_path / "state" / "buffer.jsonl"
    store = await Store.open(db.dsn)
    try:
        await store.ensure_schema()
        refused, torn_zone = await set_aside(buffer_path, store)
    finally:
        await store.close()
    quarantine = Path(f"{buffer_path}.quarantine")
    rejected = Path(f"{buffer_path}.rejected")
    env = clean_env(DATABASE_URL=db.dsn)
    py = [sys.executable, str(script)]

    extract = await run([*py, "--extract", str(quarantine), str(rejected)], env=env, cwd=tmp_path)
    assert extract.code == 0, extract.err
    extracted = extract.out.splitlines()
    assert len(extracted) == 2
    fix = tmp_path / "fix.jsonl"
    fix.write_text(extract.out)

    # The quarantined line (first) is not a valid record; the rejected one (second) is,
    # and only PostgreSQL refuses it.
    as_extracted = await run([*py, "--write", str(fix)], env=env, cwd=tmp_path)
    assert as_extracted.code == 1
    assert "1 valid records, 1 to fix" in as_extracted.out
    assert f"{fix}:1: " in as_extracted.err
    assert f"{fix}:2: " not in as_extracted.err

    async def keys() -> list[str]:
        found = await db.fetch(
            "SELECT bridge_key FROM underlying_greeks WHERE bridge_key = ANY($1::text[])",
            [refused.key, torn_zone.key],
        )
        return sorted(r["bridge_key"] for r in found)

    assert await keys() == [], "nothing is written while a line is bad"

    fix.write_text(fixed(iter(extracted), refused, torn_zone))
    check = await run([*py, str(fix)], env=env, cwd=tmp_path)
    assert check.code == 0, check.err
    assert "2 valid records, 0 to fix" in check.out
    assert await keys() == [], "checking writes nothing"

    for _ in range(2):  # a second run is harmless
        write = await run([*py, "--write", str(fix)], env=env, cwd=tmp_path)
        assert write.code == 0, write.err
        assert await keys() == sorted([refused.key, torn_zone.key])
    contracts = await db.fetch(
        "SELECT contract FROM underlying_greeks WHERE bridge_key = $1", refused.key
    )
    assert [r["contract"] for r in contracts] == ["SPY"]


# -- the site -----------------------------------------------------------------------------


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings")),
    reason="the docs extra is not installed",
)
def test_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(NO_MKDOCS_2_WARNING="1"),
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'class="mermaid"' in (site / "state-machines" / "index.html").read_text()
    api = (site / "api" / "index.html").read_text()
    assert "add_row_callback" in api
    assert "ensure_bridge_schema" in api
