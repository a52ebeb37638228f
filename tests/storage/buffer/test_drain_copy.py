"""The drain's msgspec decoder: the same lines, values and refusals as the reference path.

The reference is what the drain used before (``read_raw_batch``: the stdlib parser and the
records' own validators, then ``split_raw``). Files written by older code (the committed
fixtures) must still drain, and a line PostgreSQL refuses must still be set aside alone.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ibkr_bridge.core.records import ApiEvent, GreeksRow, Record, record_to_json
from ibkr_bridge.storage.buffer import JsonlBuffer, format_line
from ibkr_bridge.storage.buffer._copy import CopyDecoder
from ibkr_bridge.storage.drain import RejectedFile, drain_buffer
from ibkr_bridge.storage.store import Store, split_raw
from ibkr_bridge.testing import TestDatabase

FIXTURES = Path(__file__).with_name("fixtures")
T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def row(n: int, **overrides: Any) -> GreeksRow:
    values: dict[str, Any] = {
        "timestamp": T0 + timedelta(seconds=5 * n),
        "account": "DU1234567",
        "api_mode": "SOCKET",
        "delta": 100.0 + n + 0.5,
        "gamma": 0.5,
        "legs": 3,
        "key": f"c{n:06d}",
    }
    values.update(overrides)
    return GreeksRow(**values)


def with_crc(body: bytes) -> bytes:
    return body[:-1] + b',"crc":"%08x"}' % zlib.crc32(body)


def header(version: int) -> bytes:
    return json.dumps({"v": version, "type": "header", "file_id": "c" * 32}).encode() + b"\n"


def reference(line: bytes, checksummed: bool = True) -> tuple[list[Any], list[Any]] | None:
    """What the reference path makes of one line: its COPY tuples, or None (refused)."""
    from ibkr_bridge.storage.buffer._format import _parse_raw_line

    try:
        return split_raw([_parse_raw_line(line, checksummed)])
    except Exception:
        return None


def fast(line: bytes, checksummed: bool = True) -> tuple[list[Any], list[Any]] | None:
    decoder = CopyDecoder(checksummed)
    if decoder.decode([line], 0, 1):
        return None
    return decoder.greeks, decoder.events


def copy_fixture(fixture: str, path: Path) -> list[Record]:
    """The fixture at ``path``, as the buffer keeps its files; its records, read in full."""
    shutil.copyfile(FIXTURES / fixture, path)
    path.chmod(0o600)
    with JsonlBuffer(path) as buf:
        return buf.read_batch(100).records


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buf.jsonl"


# -- the committed fixtures, written by older code, still drain ---------------------------


@pytest.mark.parametrize(
    ("fixture", "greeks", "events"),
    [
        ("buffer-v1.jsonl", 5, 1),
        ("buffer-v2.jsonl", 3, 1),
    ],
)
async def test_buffers_written_by_older_code_drain(
    db: TestDatabase, path: Path, fixture: str, greeks: int, events: int
) -> None:
    expected = await asyncio.to_thread(copy_fixture, fixture, path)
    assert len(expected) == greeks + events
    store = await Store.open(db.dsn, command_timeout=30.0)
    try:
        await store.ensure_schema()
        with JsonlBuffer(path) as buf:
            progress = await drain_buffer(buf, store, batch_size=2)
    finally:
        await store.close()
    assert (progress.drained, progress.quarantined, progress.rejected) == (len(expected), 0, 0)
    assert not await asyncio.to_thread(path.exists)
    found = {}
    for table in ("portfolio_greeks", "underlying_greeks"):
        for r in await db.fetch(f"SELECT * FROM {table}"):
            found[r["bridge_key"]] = r
    logged = {r["bridge_key"]: r for r in await db.fetch("SELECT * FROM api_logs")}
    assert len(found) == greeks
    assert len(logged) == events
    for record in expected:
        if isinstance(record, GreeksRow):
            got = found[record.key]
            assert got["timestamp"] == record.timestamp
            for name in ("contract", "delta", "gamma", "vega", "theta", "account", "legs"):
                assert got[name] == getattr(record, name), name
            assert got["legs_model"] == 0  # the lines predate it: no model Greeks then
        else:
            assert isinstance(record, ApiEvent)  # the fixtures predate position rows
            got = logged[record.key]
            assert (got["message"], got["status"]) == (record.message, record.status)
            assert json.loads(got["detail"]) == record.detail


# -- the decoder agrees with the reference, line by line -----------------------------------


def test_canonical_lines_take_the_fast_path_with_the_reference_values() -> None:
    zone = datetime(2026, 12, 7, 3, 0, 0, 123456, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=5, minutes=30))
    )
    lines = [
        with_crc(record_to_json(row(1)).encode()),
        with_crc(record_to_json(row(2, contract="SPY", theta=None, vega=1e-300)).encode()),
        with_crc(record_to_json(row(3, timestamp=zone, account="D\u00e9j\u00e0")).encode()),
    ]
    for line in lines:
        assert fast(line) == reference(line) is not None
    # Version-1 lines come without a checksum.
    plain = record_to_json(row(4)).encode()
    assert fast(plain, checksummed=False) == reference(plain, checksummed=False) is not None
    assert fast(plain) is None  # ... which a version-2 file never has


def test_lines_this_version_writes_never_need_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every member format_line writes must be one the typed struct knows: a field added to
    # the record but not to the struct sends every line down the (4x slower) reference path.
    def refuse(self: CopyDecoder, seq: int, line: bytes) -> None:
        raise AssertionError(f"the reference path took {line!r}")

    monkeypatch.setattr(CopyDecoder, "_slow", refuse)
    records = [row(1), row(2, contract="SPY", theta=None, legs_model=2)]
    decoder = CopyDecoder(True)
    assert decoder.decode([format_line(r) for r in records], 0, 2) == []
    assert [g[-1] for g in decoder.greeks] == ["c000001", "c000002"]
    assert [g[-2] for g in decoder.greeks] == [0, 2]  # legs_model, a column before the key


# A Greeks line as the bridge wrote it before legs_model existed (no such member).
_BEFORE_LEGS_MODEL = (
    b'{"v":1,"type":"greeks","key":"old-1","data":{"timestamp":"2026-12-07T02:00:00+00:00",'
    b'"account":"DU1","api_mode":"SOCKET","contract":"PORTFOLIO","delta":12.5,"gamma":0.25,'
    b'"vega":-3.75,"theta":-1.5,"underlying_price":600.0,"dollar_delta":7500.0,"legs":4,'
    b'"legs_missing":0}}'
)


def test_a_line_from_before_legs_model_decodes_with_zero_model_legs() -> None:
    # The struct requires the member, so the reference decides: the record's default, 0.
    line = with_crc(_BEFORE_LEGS_MODEL)
    got = fast(line)
    assert got is not None
    assert got == reference(line)
    ((*_, legs, missing, model, key),) = got[0]
    assert (legs, missing, model, key) == (4, 0, 0, "old-1")


def _write_buffer(path: Path) -> None:
    path.write_bytes(
        header(2)
        + with_crc(_BEFORE_LEGS_MODEL)
        + b"\n"
        + format_line(row(2, legs_model=2))
        + b"\n"
        + format_line(row(3, contract="SPY", legs_model=1))
        + b"\n"
    )
    path.chmod(0o600)


async def test_lines_from_before_and_after_legs_model_drain_into_the_column(
    db: TestDatabase, path: Path
) -> None:
    await asyncio.to_thread(_write_buffer, path)
    store = await Store.open(db.dsn, command_timeout=30.0)
    try:
        await store.ensure_schema()
        with JsonlBuffer(path) as buf:
            progress = await drain_buffer(buf, store)
    finally:
        await store.close()
    assert (progress.drained, progress.quarantined, progress.rejected) == (3, 0, 0)
    got = {
        r["bridge_key"]: r["legs_model"]
        for table in ("portfolio_greeks", "underlying_greeks")
        for r in await db.fetch(f"SELECT bridge_key, legs_model FROM {table}")
    }
    assert got == {"old-1": 0, "c000002": 2, "c000003": 1}


_TOKENS = st.sampled_from(
    [
        "1",
        "-0",
        "1.5",
        "1E2",
        "1e400",
        "-1e-400",
        "123456789012345678901234567890",
        "NaN",
        "Infinity",
        "true",
        "null",
        '"12.5"',
        '""',
        '"x"',
        "[]",
        "{}",
        '"2026-12-07T03:00:00"',
        '"2026-12-07t03:00:00z"',
        '"2026-12-07T03:00:00.1234567+00:00"',
        '"2026-12-07T03:00:00.9999999+00:00"',
        '"2026-12-07 03:00:00+00:00"',
        '"2026-12-07T03:00+00:00"',
        '"2026-12-07T03:00:00Z"',
        '"20261207T030000Z"',
        '"\\ud800"',
        '"\\u0000"',
    ]
)
_FIELDS = [
    "timestamp",
    "contract",
    "delta",
    "theta",
    "underlying_price",
    "account",
    "legs",
    "legs_missing",
    "legs_model",
]


@st.composite
def mutated_lines(draw: st.DrawFn) -> tuple[bytes, bool]:
    records: list[GreeksRow | ApiEvent] = [
        row(1),
        ApiEvent(timestamp=T0, api_mode="SOCKET", event="e", message="m", key="e1"),
    ]
    record = draw(st.sampled_from(records))
    text = record_to_json(record)
    obj = json.loads(text)
    for name, token in draw(st.dictionaries(st.sampled_from(_FIELDS), _TOKENS, max_size=2)).items():
        if name in obj["data"]:
            old = json.dumps(obj["data"][name], separators=(",", ":"))
            text = text.replace(f'"{name}":{old}', f'"{name}":{token}', 1)
    edit = draw(
        st.sampled_from(
            [
                *("", "space", "v", "type", "key", "dup", "extra", "missing", "nomodel"),
                *("top", "crc", "nocrc"),
            ]
        )
    )
    if edit == "space":
        text = " " + text
    elif edit == "v":
        text = text.replace('"v":1', '"v":true', 1)
    elif edit == "type":
        text = text.replace('"type":"greeks"', '"type":"greeks","type":"api_log"', 1)
    elif edit == "key":
        text = text.replace('"key":"c000001"', '"key":""', 1)
    elif edit == "dup":
        text = text.replace('"account":', '"account":"x","account":', 1)
    elif edit == "extra":
        text = text[:-2] + ',"surprise":1}}'
    elif edit == "missing":
        text = text.replace('"legs_missing":0', '"legs_missing":0,"x":0', 1).replace(
            '"legs":3,', "", 1
        )
    elif edit == "nomodel":  # a line from before legs_model existed
        text = text.replace(',"legs_model":0', "", 1)
    elif edit == "top":
        text = text[:-1] + ',"note":"x"}'
    body = text.encode()
    line = with_crc(body)
    if edit == "crc":
        line = line[:-3] + (b"0" if line[-3:-2] != b"0" else b"1") + line[-2:]
    checksummed = True
    if edit == "nocrc":
        line, checksummed = body, draw(st.booleans())
    return line, checksummed


@settings(max_examples=400, deadline=None)
@given(mutated_lines())
def test_the_decoder_accepts_refuses_and_converts_as_the_reference(
    case: tuple[bytes, bool],
) -> None:
    line, checksummed = case
    assert fast(line, checksummed) == reference(line, checksummed), line


# -- batches: the same span, the same quarantine ------------------------------------------


def test_a_copy_batch_covers_the_lines_a_raw_batch_does(tmp_path: Path) -> None:
    good = [with_crc(record_to_json(row(n)).encode()) for n in range(6)]
    bad = [b"{torn", with_crc(record_to_json(row(9)).encode()).replace(b"109.5", b"109.6", 1)]
    lines = [good[0], bad[0], good[1], good[2], bad[1], *good[3:]]
    for name in ("raw", "copy"):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(header(2) + b"".join(x + b"\n" for x in lines))
        path.chmod(0o600)
    with JsonlBuffer(tmp_path / "raw.jsonl") as raw_buf:
        raw = [raw_buf.read_raw_batch(3)]
        raw.append(raw_buf.read_raw_batch(3, after=raw[0]))
        raw.append(raw_buf.read_raw_batch(3, after=raw[1]))
    with JsonlBuffer(tmp_path / "copy.jsonl") as copy_buf:
        copy = [copy_buf.read_copy_batch(3)]
        copy.append(copy_buf.read_copy_batch(3, after=copy[0]))
        copy.append(copy_buf.read_copy_batch(3, after=copy[1]))
    for r, c in zip(raw, copy, strict=True):
        assert (r.start, r.end, r.quarantined) == (c.start, c.end, c.quarantined)
        assert [g[1:] for g in split_raw(r.lines)[0]] == [g[1:] for g in c.greeks]
        assert [g[0] for g in c.greeks] == sorted(g[0] for g in c.greeks)
    q = [json.loads(x) for x in (tmp_path / "copy.jsonl.quarantine").read_text().splitlines()]
    assert [e["text"].encode() for e in q] == bad
    assert [e["offset"] for e in q] == [
        e["offset"]
        for e in map(json.loads, (tmp_path / "raw.jsonl.quarantine").read_text().splitlines())
    ]


async def test_a_refused_line_is_set_aside_alone_with_its_record(
    db: TestDatabase, path: Path
) -> None:
    # legs is not checked by the record, but it does not fit the integer column.
    records = [row(1), row(2, legs=3_000_000_000), row(3)]
    with JsonlBuffer(path) as buf:
        buf.append(records)
    store = await Store.open(db.dsn, command_timeout=30.0)
    try:
        await store.ensure_schema()
        with JsonlBuffer(path) as buf:
            progress = await drain_buffer(buf, store, reject=RejectedFile(path))
    finally:
        await store.close()
    assert (progress.drained, progress.rejected) == (3, 1)
    keys = [r["bridge_key"] for r in await db.fetch("SELECT bridge_key FROM portfolio_greeks")]
    assert sorted(keys) == ["c000001", "c000003"]
    [entry] = (await asyncio.to_thread(RejectedFile(path).path.read_text)).splitlines()
    assert json.loads(json.loads(entry)["record"]) == json.loads(record_to_json(records[1]))
