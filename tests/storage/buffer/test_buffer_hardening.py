"""Buffer hardening: drained values validated as live, per-line checksums, no symlink
followed, and a buffer path of the wrong shape exits with the configuration code.

The drains go through :func:`ibkr_bridge.storage.drain.drain_buffer` into a real PostgreSQL (the
test's private schema); the exit codes through ``python -m ibkr_bridge`` subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ibkr_bridge.core.records import (
    ApiEvent,
    GreeksRow,
    record_from_dict,
    record_from_json,
    record_to_dict,
    record_to_json,
)
from ibkr_bridge.ops.exitcodes import EXIT_CONFIG
from ibkr_bridge.storage.buffer import BufferPathError, JsonlBuffer, format_line, inspect_buffer
from ibkr_bridge.storage.buffer import _format as buffer_module
from ibkr_bridge.storage.drain import DrainProgress, RejectedFile, drain_buffer
from ibkr_bridge.storage.store import Store
from ibkr_bridge.testing import TestDatabase

ROOT = Path(__file__).resolve().parents[3]
FIXTURE_V1 = Path(__file__).with_name("fixtures") / "buffer-v1.jsonl"
T0 = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
COMPANIONS = ("", ".cursor", ".quarantine", ".lock", ".rejected")


def row(n: int, **overrides: Any) -> GreeksRow:
    values: dict[str, Any] = {
        "timestamp": T0 + timedelta(seconds=5 * n),
        "account": "DU1234567",
        "api_mode": "SOCKET",
        "delta": 1000.0 + n + 0.125,
        "gamma": 0.5,
        "vega": -2.25,
        "theta": -1.75,
        "legs": 3,
        "key": f"h{n:06d}",
    }
    values.update(overrides)
    return GreeksRow(**values)


def header(version: int, file_id: str = "b" * 32) -> bytes:
    return json.dumps({"v": version, "type": "header", "file_id": file_id}).encode() + b"\n"


def with_crc(body: bytes) -> bytes:
    """A line the way format_line frames it, around any body (even one it would refuse)."""
    return body[:-1] + b',"crc":"%08x"}' % zlib.crc32(body)


def forged(n: int, **data: str) -> bytes:
    """Row n's JSON with some values replaced by raw JSON tokens (NaN, Infinity, ...)."""
    text = record_to_json(row(n))
    for name, token in data.items():
        obj = json.loads(text)
        old = json.dumps(obj["data"][name])
        text = text.replace(f'"{name}":{old}', f'"{name}":{token}', 1)
    return text.encode()


async def drain_into(db: TestDatabase, path: Path) -> DrainProgress:
    store = await Store.open(db.dsn, connect_timeout=5.0, command_timeout=30.0)
    try:
        await store.ensure_schema()
        with JsonlBuffer(path) as buf:
            return await drain_buffer(buf, store, batch_size=2000, reject=RejectedFile(path))
    finally:
        await store.close()


async def keys_in(db: TestDatabase, table: str = "portfolio_greeks") -> list[str]:
    found = await db.fetch(f"SELECT bridge_key FROM {table} ORDER BY bridge_key")
    return [r["bridge_key"] for r in found]


def quarantined(path: Path) -> list[dict[str, Any]]:
    q = path.with_name(path.name + ".quarantine")
    return [json.loads(line) for line in q.read_text().splitlines()] if q.exists() else []


def _flip_digit(line: bytes, start: int) -> bytes:
    """The line with the first digit at or after ``start`` changed to another digit."""
    i = next(i for i in range(start, len(line)) if chr(line[i]).isdigit())
    other = b"7" if line[i : i + 1] != b"7" else b"3"
    return line[:i] + other + line[i + 1 :]


def write_file(path: Path, version: int, lines: list[bytes]) -> None:
    path.write_bytes(header(version) + b"".join(line + b"\n" for line in lines))
    path.chmod(0o600)


def damage_one_of_10000(path: Path) -> bytes:
    """Append 10,000 rows, then change one digit of row 5000's delta; returns that line."""
    with JsonlBuffer(path) as buf:
        for start in range(0, 10_000, 1000):
            buf.append([row(n) for n in range(start, start + 1000)])
    data = path.read_bytes()
    line_start = data.rindex(b"\n", 0, data.index(b'"key":"h005000"')) + 1
    line_end = data.index(b"\n", line_start)
    line = data[line_start:line_end]
    damaged = _flip_digit(line, line.index(b'"delta":'))
    # Still valid JSON with a plausible value: only the checksum can tell.
    assert json.loads(damaged)["data"]["delta"] != json.loads(line)["data"]["delta"]
    path.write_bytes(data[:line_start] + damaged + data[line_end:])
    return damaged


def upgrade_fixture(path: Path) -> None:
    """The v1 fixture as left by the old bridge, then one row appended by this one."""
    shutil.copyfile(FIXTURE_V1, path)
    path.chmod(0o600)
    assert json.loads(path.read_bytes().splitlines()[0])["v"] == 1
    with JsonlBuffer(path) as buf:
        buf.append([row(99)])
        assert buf.notices == ()
    # Rows appended after the upgrade go behind the old ones, with checksums.
    assert path.read_bytes().endswith(format_line(row(99)) + b"\n")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buf.jsonl"


# -- values: validated exactly as the live path does --------------------------------------


@pytest.mark.parametrize("version", [1, 2])
async def test_nan_and_infinite_greeks_are_quarantined_never_drained(
    db: TestDatabase, path: Path, version: int
) -> None:
    # Framed with a correct checksum: not disk damage but values the live path refuses.
    frame = with_crc if version == 2 else (lambda body: body)
    bad = [
        forged(1, delta="NaN"),
        forged(2, gamma="Infinity"),
        forged(3, theta="-Infinity"),
        forged(4, vega="1e400"),  # parses to inf
    ]
    good = [record_to_json(row(n)).encode() for n in (0, 5)]
    write_file(path, version, [frame(line) for line in [good[0], *bad, good[1]]])

    progress = await drain_into(db, path)

    assert await keys_in(db) == ["h000000", "h000005"]
    assert (progress.quarantined, progress.rejected) == (4, 0)
    entries = quarantined(path)
    assert [e["text"].encode() for e in entries] == [frame(line) for line in bad]
    assert all("finite number" in e["error"] for e in entries), entries
    # Drained and deleted: quarantined lines count as consumed.
    assert not await asyncio.to_thread(path.exists)


def test_raw_and_full_reads_refuse_the_same_values(path: Path) -> None:
    lines = [
        forged(1, delta="NaN"),
        forged(2, underlying_price="-Infinity"),
        forged(3, timestamp='"2026-12-07T01:00:00"'),  # no zone
        forged(4, delta='"12.5"'),  # a string the live converter turns into 12.5
        forged(5, legs="7"),
    ]
    write_file(path, 2, [with_crc(line) for line in lines])
    with JsonlBuffer(path) as buf:
        raw = buf.read_raw_batch(100)
        full = buf.read_batch(100)
    assert raw.quarantined == full.quarantined == 3
    assert [r.key for r in full.records] == ["h000004", "h000005"]
    # What the drain copies is what the live record holds: the converter's float.
    assert raw.lines[0]["data"]["delta"] == 12.5
    assert type(raw.lines[0]["data"]["delta"]) is float
    assert raw.lines[1] == json.loads(lines[4])


async def test_a_value_of_the_wrong_type_is_quarantined_never_copied(
    db: TestDatabase, path: Path
) -> None:
    # A checksummed line (hand-edited, or from a buggy writer) whose text, count or object
    # field holds another JSON type: the line's own bad data, quarantined by both reads and
    # by the drain, never a COPY that fails for the whole batch.
    bad = [
        forged(1, account="NaN"),
        forged(2, legs="true"),
        forged(3, legs='"3"'),
        forged(4, contract="null"),
        forged(6, api_mode="[1]"),
    ]
    good = [record_to_json(row(n)).encode() for n in (0, 5)]
    write_file(path, 2, [with_crc(line) for line in [good[0], *bad, good[1]]])
    with JsonlBuffer(path) as buf:
        raw = buf.read_raw_batch(100)
        full = buf.read_batch(100)
    assert raw.quarantined == full.quarantined == 5
    assert [r.key for r in full.records] == ["h000000", "h000005"]

    progress = await drain_into(db, path)

    assert await keys_in(db) == ["h000000", "h000005"]
    assert (progress.quarantined, progress.rejected) == (5, 0)
    errors = [e["error"] for e in quarantined(path)]
    assert "account must be a string, got nan" in errors[0], errors
    assert "legs must be an integer, got True" in errors[1], errors
    assert "legs must be an integer, got '3'" in errors[2], errors


# -- checksums ------------------------------------------------------------------------------


def test_lines_carry_a_checksum_of_their_record_json(path: Path) -> None:
    records = [row(1), row(2, theta=None)]
    with JsonlBuffer(path) as buf:
        buf.append(records)
        lines = path.read_bytes().splitlines()
        assert json.loads(lines[0])["v"] == buffer_module.HEADER_VERSION == 2
        for line, record in zip(lines[1:], records, strict=True):
            body = record_to_json(record).encode()
            assert line == body[:-1] + b',"crc":"%08x"}' % zlib.crc32(body)
            assert line == format_line(record)
        assert buf.read_batch(10).records == records
        assert [record_from_json(json.dumps(x)) for x in buf.read_raw_batch(10).lines] == records


async def test_one_flipped_digit_in_10000_rows_is_quarantined_not_written(
    db: TestDatabase, path: Path
) -> None:
    damaged = damage_one_of_10000(path)

    progress = await drain_into(db, path)

    keys = await keys_in(db)
    assert len(keys) == 9_999
    assert "h005000" not in keys
    assert progress.quarantined == 1
    [entry] = quarantined(path)
    assert entry["text"].encode() == damaged
    assert "checksum mismatch" in entry["error"]
    deltas = await db.fetch("SELECT delta FROM portfolio_greeks WHERE bridge_key = 'h004999'")
    assert deltas[0]["delta"] == 1000.0 + 4999 + 0.125


@pytest.mark.parametrize(
    ("where", "error"),
    [
        (b'"gamma":', "checksum mismatch"),  # in a value
        (b'"crc":"', "checksum mismatch"),  # in the checksum itself
        (b'"timestamp":"', "checksum mismatch"),  # in the timestamp (still a valid one)
    ],
)
def test_a_damaged_line_is_quarantined_by_both_reads(path: Path, where: bytes, error: str) -> None:
    with JsonlBuffer(path) as buf:
        buf.append([row(1), row(2), row(3)])
    lines = path.read_bytes().split(b"\n")
    lines[2] = _flip_digit(lines[2], lines[2].index(where) + len(where))
    path.write_bytes(b"\n".join(lines))
    with JsonlBuffer(path) as buf:
        assert [r.key for r in buf.read_batch(10).records] == ["h000001", "h000003"]
        raw = buf.read_raw_batch(10)
        assert ([x["key"] for x in raw.lines], raw.quarantined) == (["h000001", "h000003"], 1)
    [entry] = quarantined(path)
    assert error in entry["error"]


def test_a_line_without_its_checksum_in_a_checksummed_file_is_quarantined(path: Path) -> None:
    with JsonlBuffer(path) as buf:
        buf.append([row(1), row(2)])
    data = path.read_bytes()
    # The checksum's own name damaged: the record is intact, but nothing vouches for it.
    path.write_bytes(data.replace(b'"crc":', b'"crd":', 1))
    with JsonlBuffer(path) as buf:
        batch = buf.read_batch(10)
    assert ([r.key for r in batch.records], batch.quarantined) == (["h000002"], 1)
    assert "no checksum" in quarantined(path)[0]["error"]


async def test_a_buffer_written_before_checksums_still_drains(db: TestDatabase, path: Path) -> None:
    upgrade_fixture(path)

    progress = await drain_into(db, path)

    assert (progress.drained, progress.quarantined, progress.rejected) == (7, 0, 0)
    assert await keys_in(db) == [*(f"fixture-v1-g{n}" for n in range(5)), "h000099"]
    assert await keys_in(db, "api_logs") == ["fixture-v1-e0"]
    rows = await db.fetch(
        "SELECT delta, theta, dollar_delta, legs FROM portfolio_greeks "
        "WHERE bridge_key IN ('fixture-v1-g0', 'fixture-v1-g2') ORDER BY bridge_key"
    )
    assert [tuple(r) for r in rows] == [(12.5, -1.5, 7500.0, 4), (14.5, None, 8700.0, 4)]
    assert quarantined(path) == []


# -- symlinks: refused, never followed -------------------------------------------------------


@pytest.mark.parametrize("suffix", COMPANIONS)
def test_a_symlinked_buffer_file_is_refused_and_its_target_untouched(
    tmp_path: Path, path: Path, suffix: str
) -> None:
    target = tmp_path / "elsewhere" / "precious.txt"
    target.parent.mkdir()
    content = header(1) + b"not buffer lines, someone else's file\n"
    target.write_bytes(content)
    target.chmod(0o644)
    link = path.with_name(path.name + suffix)
    link.symlink_to(target)

    with pytest.raises(BufferPathError, match="symbolic link"):
        JsonlBuffer(path).open()

    assert target.read_bytes() == content
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert link.is_symlink()
    made = {p.name for p in tmp_path.iterdir()}
    assert made == {"elsewhere", link.name}  # no quarantine, lock or data file made


def test_a_dangling_symlink_is_refused_and_nothing_is_created_through_it(
    tmp_path: Path, path: Path
) -> None:
    target = tmp_path / "created-through-the-link"
    path.with_name(path.name + ".lock").symlink_to(target)
    with pytest.raises(BufferPathError, match="symbolic link"):
        JsonlBuffer(path).open()
    assert not target.exists()


def test_inspection_reports_a_symlink_without_reading_through_it(
    tmp_path: Path, path: Path
) -> None:
    target = tmp_path / "other.jsonl"
    shutil.copyfile(FIXTURE_V1, target)
    path.symlink_to(target)
    found = inspect_buffer(path)
    assert found.error is not None
    assert "symbolic link" in found.error
    assert found.stats.records_pending == 0


# -- path shape: the configuration exit code ------------------------------------------------


def _env(tmp: Path, buffer_path: Path, dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
    env.update(
        PYTHONPATH=str(ROOT),
        HOME=str(tmp),
        PYTHONUNBUFFERED="1",
        DATABASE_URL=dsn,
        BRIDGE_BUFFER_PATH=str(buffer_path),
        IB_SOCKET_PORT="9",  # never reached: the buffer is refused first
    )
    return env


def _cli(tmp: Path, env: dict[str, str], *args: str, **kwargs: Any) -> tuple[int, str]:
    none = tmp / "none.env"
    proc = subprocess.run(
        [sys.executable, "-m", "ibkr_bridge", "--env-file", str(none), *args],
        env=env,
        cwd=tmp,
        capture_output=True,
        timeout=60,
        check=False,
        **kwargs,
    )
    return proc.returncode, proc.stdout.decode() + proc.stderr.decode()


@pytest.fixture
def shapes(tmp_path: Path) -> dict[str, Path]:
    state = tmp_path / "state"
    state.mkdir()
    directory = state / "dir.jsonl"
    directory.mkdir()
    target = state / "target.jsonl"
    shutil.copyfile(FIXTURE_V1, target)
    link = state / "link.jsonl"
    link.symlink_to(target)
    future = state / "future.jsonl"
    future.write_bytes(header(3) + b"a line this version cannot read\n")
    future.chmod(0o600)
    return {"directory": directory, "symlink": link, "future version": future}


@pytest.mark.parametrize("shape", ["directory", "symlink", "future version"])
@pytest.mark.parametrize("command", [("run",), ("buffer", "drain")])
async def test_a_buffer_path_of_the_wrong_shape_exits_with_the_config_code(
    db: TestDatabase,
    tmp_path: Path,
    shapes: dict[str, Path],
    shape: str,
    command: tuple[str, ...],
) -> None:
    env = _env(tmp_path, shapes[shape], db.dsn)
    code, output = await asyncio.to_thread(_cli, tmp_path, env, *command)
    # 2: the shipped unit's RestartPreventExitStatus, so no restart loop every 5 s.
    assert code == EXIT_CONFIG, output
    expected = {
        "directory": "not a regular file",
        "symlink": "symbolic link",
        "future version": "header version 3",
    }
    assert expected[shape] in output
    assert "Traceback" not in output


def test_the_shipped_unit_does_not_restart_on_the_config_code() -> None:
    unit = (ROOT / "examples" / "ibkr-bridge.service").read_text()
    prevent = next(ln for ln in unit.splitlines() if ln.startswith("RestartPreventExitStatus="))
    assert str(EXIT_CONFIG) in prevent.split("=", 1)[1].split()


def _drain_where_it_may_not_open(dsn: str) -> tuple[int, str]:
    # Somewhere the test user (or, as root, "nobody") can reach but not open.
    top = Path(tempfile.mkdtemp(prefix="ibkr-bridge-perm-"))
    state = top / "state"
    try:
        top.chmod(0o755)
        state.mkdir()
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            state.chmod(0o700)  # root's: closed to nobody
            kwargs["user"] = 65534
        else:
            state.chmod(0o000)
        env = _env(top, state / "buffer.jsonl", dsn)
        return _cli(top, env, "buffer", "drain", **kwargs)
    finally:
        state.chmod(0o700)
        shutil.rmtree(top)


async def test_a_buffer_the_process_may_not_open_exits_with_the_config_code(
    db: TestDatabase,
) -> None:
    code, output = await asyncio.to_thread(_drain_where_it_may_not_open, db.dsn)
    assert code == EXIT_CONFIG, output
    assert "Permission denied" in output
    assert "Traceback" not in output


_FIELDS: tuple[str, ...]
_FIELDS = ("delta", "gamma", "vega", "theta", "underlying_price", "dollar_delta", "legs")
_FIELDS += ("timestamp", "status", "account", "event")
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["12.5", "nan", "inf", "x", "", "info", "warning", "2026-12-07T01:00:00"]),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["greeks", "api_log"]),
    changes=st.dictionaries(
        st.sampled_from(_FIELDS),
        _ANY_VALUE,
        max_size=3,
    ),
)
def test_the_drain_and_the_full_read_accept_and_refuse_the_same_lines(
    kind: str, changes: dict[str, Any]
) -> None:
    record = (
        row(1)
        if kind == "greeks"
        else ApiEvent(timestamp=T0, api_mode="SOCKET", event="startup", message="m", key="e1")
    )
    obj = json.loads(record_to_json(record))
    for name, value in changes.items():
        if name in obj["data"]:
            obj["data"][name] = value
    line = with_crc(json.dumps(obj, separators=(",", ":"), allow_nan=True).encode())
    try:
        full = buffer_module._parse_line(line)
    except ValueError:
        full = None
    try:
        raw = buffer_module._parse_raw_line(line)
    except ValueError:
        raw = None
    assert (raw is None) == (full is None), (changes, raw, full)
    if raw is not None:
        # What the drain copies is what the live record holds.
        assert record_from_dict(raw) == full
        assert record_to_dict(full) == raw
