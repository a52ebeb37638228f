"""JsonlBuffer: round trip, cursor, compaction, quarantine, locking, size cap, recovery."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ibkr_bridge.core.records import (
    ApiEvent,
    GreeksRow,
    Record,
    record_from_dict,
)
from ibkr_bridge.storage.buffer import (
    Batch,
    BufferFormatError,
    BufferFullError,
    BufferLockedError,
    JsonlBuffer,
    RawBatch,
    _jsonl,
)
from ibkr_bridge.storage.buffer import _format as buffer_module

T0 = datetime(2024, 3, 8, 14, 30, tzinfo=UTC)


def greeks(n: int, **overrides: Any) -> GreeksRow:
    values: dict[str, Any] = {
        "timestamp": T0 + timedelta(seconds=5 * n),
        "account": "U2052408",
        "api_mode": "SOCKET",
        "delta": n + 0.1,
        "gamma": 0.2,
        "key": f"g{n:06d}",
    }
    values.update(overrides)
    return GreeksRow(**values)


def line_of(record: Record) -> bytes:
    return buffer_module.format_line(record) + b"\n"


def quarantine_entries(buf: JsonlBuffer) -> list[dict[str, Any]]:
    if not buf.quarantine_path.exists():
        return []
    return [json.loads(line) for line in buf.quarantine_path.read_text().splitlines()]


def quarantined_raw(entry: dict[str, Any]) -> bytes:
    if "text" in entry:
        return str(entry["text"]).encode()
    return base64.b64decode(entry["raw_b64"])


def drain(buf: JsonlBuffer, size: int = 3) -> list[Record]:
    out: list[Record] = []
    while not buf.is_empty:
        batch = buf.read_batch(size)
        assert batch.end > batch.start, "pending bytes that no read can reach"
        out.extend(batch.records)
        buf.commit(batch)
    return out


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buf.jsonl"


@pytest.fixture
def buf(path: Path) -> Iterator[JsonlBuffer]:
    with JsonlBuffer(path) as b:
        yield b


# -- round trip and order ------------------------------------------------------------------


def test_round_trip_keeps_every_value(buf: JsonlBuffer) -> None:
    new_york = ZoneInfo("America/New_York")
    records: list[Record] = [
        GreeksRow(
            timestamp=datetime(2024, 3, 8, 9, 30, 0, 123456, tzinfo=new_york),
            account="U1",
            api_mode="PORTAL",
            contract="SPY",
            delta=0.1 + 0.2,
            gamma=1e-300,
            vega=-0.0,
            theta=None,
            underlying_price=5123.456789012345,
            dollar_delta=None,
            legs=12,
            legs_missing=1,
        ),
        ApiEvent(
            timestamp=datetime(2024, 3, 8, 23, 45, tzinfo=timezone(timedelta(hours=-5))),
            api_mode="SOCKET",
            event="transition",
            message="reset window \u2014 \u00e9t\u00e9\nsecond line",
            status="warning",
            machine="watchdog",
            source_state="connected",
            dest_state=None,
            detail={"code": 1100, "nested": {"list": [1, 2.5, None, "x"]}},
        ),
    ]
    buf.append(records)
    batch = buf.read_batch(10)
    assert batch.records == records
    assert [r.timestamp.utcoffset() for r in batch.records] == [
        r.timestamp.utcoffset() for r in records
    ]
    assert [r.key for r in batch.records] == [r.key for r in records]
    raw = buf.read_raw_batch(10)
    assert [record_from_dict(line) for line in raw.lines] == records
    assert (raw.start, raw.end) == (batch.start, batch.end)


def test_order_is_kept_across_appends_and_batches(buf: JsonlBuffer) -> None:
    written = [greeks(n) for n in range(10)]
    buf.append(written[:3])
    buf.append(written[3:4])
    buf.append(written[4:])
    assert drain(buf, size=4) == written


def test_read_does_not_move_the_cursor(buf: JsonlBuffer) -> None:
    buf.append([greeks(n) for n in range(5)])
    first = buf.read_batch(2)
    again = buf.read_batch(2)
    assert first == again
    assert [r.key for r in first.records] == ["g000000", "g000001"]
    buf.commit(first)
    assert [r.key for r in buf.read_batch(2).records] == ["g000002", "g000003"]


def test_empty_buffer_reads_an_empty_batch(buf: JsonlBuffer) -> None:
    batch = buf.read_batch(100)
    assert batch.records == []
    assert batch.end == batch.start
    assert buf.is_empty
    buf.commit(batch)  # harmless
    assert not buf.path.exists()


def test_read_batch_max_bytes_takes_at_least_one_line(buf: JsonlBuffer) -> None:
    records = [greeks(n) for n in range(4)]
    buf.append(records)
    one = len(line_of(records[0]))
    assert len(buf.read_batch(10, max_bytes=1).records) == 1
    assert len(buf.read_batch(10, max_bytes=2 * one).records) == 2
    assert len(buf.read_batch(10, max_bytes=2 * one - 1).records) == 1


def test_record_that_cannot_be_serialized_writes_nothing(buf: JsonlBuffer) -> None:
    bad = ApiEvent(timestamp=T0, api_mode="SOCKET", event="e", message="m", detail={"x": {1, 2}})
    with pytest.raises(TypeError):
        buf.append([greeks(1), bad])
    assert buf.is_empty
    assert not buf.path.exists()


# -- cursor, compaction, restart ---------------------------------------------------------------


def test_cursor_survives_reopen(path: Path) -> None:
    with JsonlBuffer(path) as buf:
        buf.append([greeks(n) for n in range(6)])
        buf.commit(buf.read_batch(4))
    with JsonlBuffer(path) as buf:
        assert buf.count_pending() == 2
        assert [r.key for r in drain(buf)] == ["g000004", "g000005"]


def test_uncommitted_batch_is_replayed_after_reopen(path: Path) -> None:
    with JsonlBuffer(path) as buf:
        buf.append([greeks(n) for n in range(3)])
        read = buf.read_batch(2)
    with JsonlBuffer(path) as buf:
        assert buf.read_batch(2).records == read.records


def test_compaction_deletes_files_and_next_file_is_new(path: Path, buf: JsonlBuffer) -> None:
    buf.append([greeks(1), greeks(2)])
    first_id = buf.stats().file_id
    buf.commit(buf.read_batch(1))
    assert path.exists()
    assert buf.cursor_path.exists()
    buf.commit(buf.read_batch(1))
    assert not path.exists()
    assert not buf.cursor_path.exists()
    assert buf.is_empty
    buf.append([greeks(3)])
    assert buf.stats().file_id not in (None, first_id)
    assert [r.key for r in drain(buf)] == ["g000003"]


def test_commit_twice_is_a_no_op_and_a_gap_is_refused(buf: JsonlBuffer) -> None:
    buf.append([greeks(n) for n in range(4)])
    first = buf.read_batch(1)
    buf.commit(first)
    buf.commit(first)
    assert buf.count_pending() == 3
    second = buf.read_batch(1)
    skipping = attrs.evolve(second, start=second.end, end=second.end + 10)
    with pytest.raises(ValueError, match="skip uncommitted"):
        buf.commit(skipping)
    assert buf.count_pending() == 3


def test_batch_from_a_drained_file_is_a_no_op(buf: JsonlBuffer) -> None:
    buf.append([greeks(1)])
    old = buf.read_batch(1)
    buf.commit(old)
    buf.append([greeks(2)])
    buf.commit(old)
    assert [r.key for r in buf.read_batch(5).records] == ["g000002"]


@pytest.mark.parametrize(
    ("cursor", "notice"),
    [
        ({"file_id": "0" * 32, "offset": 10}, "another data file"),
        ("beyond", "outside the data"),
        ("midline", "mid-line"),
        (b"{not json", "unreadable"),
        ({"file_id": "SAME", "offset": "12"}, "has offset"),
    ],
)
def test_bad_cursor_means_start_after_header(path: Path, cursor: Any, notice: str) -> None:
    records = [greeks(n) for n in range(3)]
    with JsonlBuffer(path) as buf:
        buf.append(records)
        buf.commit(buf.read_batch(1))
        file_id = buf.stats().file_id
        size = buf.stats().file_bytes
    if cursor == "beyond":
        cursor = {"file_id": file_id, "offset": size + 100}
    elif cursor == "midline":
        header_end = path.read_bytes().index(b"\n") + 1
        cursor = {"file_id": file_id, "offset": header_end + 5}
    elif isinstance(cursor, dict) and cursor["file_id"] == "SAME":
        cursor["file_id"] = file_id
    path.with_name(path.name + ".cursor").write_bytes(
        cursor if isinstance(cursor, bytes) else json.dumps(cursor).encode()
    )
    with JsonlBuffer(path) as buf:
        assert any(notice in n for n in buf.notices), buf.notices
        assert drain(buf) == records


def test_missing_cursor_after_crash_replays_from_start(path: Path) -> None:
    with JsonlBuffer(path) as buf:
        buf.append([greeks(1), greeks(2)])
        buf.commit(buf.read_batch(1))
    path.with_name(path.name + ".cursor").unlink()
    with JsonlBuffer(path) as buf:
        assert buf.notices == ()
        assert [r.key for r in drain(buf)] == ["g000001", "g000002"]


def test_crash_between_cursor_and_delete_compacts_on_open(path: Path) -> None:
    with JsonlBuffer(path) as buf:
        buf.append([greeks(1), greeks(2)])
        buf.commit(buf.read_batch(1))
        keep = path.read_bytes()
        buf.commit(buf.read_batch(1))
    # Re-create what a crash after the fsync'd cursor advance but before the unlink leaves.
    path.write_bytes(keep)
    file_id = json.loads(keep.split(b"\n")[0])["file_id"]
    path.with_name(path.name + ".cursor").write_text(
        json.dumps({"file_id": file_id, "offset": len(keep)})
    )
    with JsonlBuffer(path) as buf:
        assert buf.is_empty
    assert not path.exists()
    assert not path.with_name(path.name + ".cursor").exists()


def test_crash_between_deletes_leaves_a_harmless_cursor(path: Path) -> None:
    with JsonlBuffer(path) as buf:
        buf.append([greeks(1)])
        buf.commit(buf.read_batch(1))
    stale = path.with_name(path.name + ".cursor")
    stale.write_text(json.dumps({"file_id": "f" * 32, "offset": 999}))
    with JsonlBuffer(path) as buf:
        assert buf.is_empty
        buf.append([greeks(2)])
        assert [r.key for r in drain(buf)] == ["g000002"]


def test_restart_after_every_step(path: Path) -> None:
    written = [greeks(n) for n in range(7)]
    committed: list[Record] = []
    steps: list[Callable[[JsonlBuffer], object]] = [
        lambda b: b.append(written[:2]),
        lambda b: b.append(written[2:5]),
        lambda b: committed.extend(_read_commit(b, 2)),
        lambda b: b.append(written[5:]),
        lambda b: committed.extend(_read_commit(b, 4)),
        lambda b: committed.extend(_read_commit(b, 4)),
        lambda b: committed.extend(_read_commit(b, 4)),
    ]
    for step in steps:
        with JsonlBuffer(path) as buf:
            step(buf)
    assert committed == written
    assert not path.exists()


def _read_commit(buf: JsonlBuffer, n: int) -> list[Record]:
    batch = buf.read_batch(n)
    buf.commit(batch)
    return batch.records


# -- quarantine and recovery -------------------------------------------------------------------


def _file_with(path: Path, *lines: bytes, file_id: str = "a" * 32, version: int = 1) -> None:
    # Version 1 (lines without checksums) by default: these tests forge lines by hand to
    # reach the structural checks, which a version-2 file's checksum check would pre-empt.
    header = json.dumps({"v": version, "type": "header", "file_id": file_id}).encode() + b"\n"
    path.write_bytes(header + b"".join(lines))
    path.chmod(0o600)


def test_corrupt_lines_are_quarantined_once_and_recoverable(path: Path) -> None:
    good = [greeks(n) for n in range(3)]
    torn_json = line_of(greeks(9))[:40] + b"\n"
    bad_utf8 = b'{"v":1,"type":"greeks","key":"\xff\xfe"}\n'
    future = json.dumps({"v": 2, "type": "greeks", "key": "k", "data": {}}).encode() + b"\n"
    _file_with(path, line_of(good[0]), torn_json, bad_utf8, line_of(good[1]), future)
    with open(path, "ab") as f:
        f.write(line_of(good[2]))
    header_end = path.read_bytes().index(b"\n") + 1
    with JsonlBuffer(path) as buf:
        batch = buf.read_batch(100)
        assert batch.records == good
        assert batch.quarantined == 3
        assert buf.read_batch(100).quarantined == 3  # read again: not quarantined again
    with JsonlBuffer(path) as buf:
        assert buf.read_raw_batch(100).quarantined == 3  # and not after a restart
        entries = quarantine_entries(buf)
        assert [quarantined_raw(e) for e in entries] == [
            torn_json[:-1],
            bad_utf8[:-1],
            future[:-1],
        ]
        first = header_end + len(line_of(good[0]))
        assert [e["offset"] for e in entries] == [
            first,
            first + len(torn_json),
            first + len(torn_json) + len(bad_utf8) + len(line_of(good[1])),
        ]
        assert "raw_b64" in entries[1]
        assert "schema version" in entries[2]["error"]
        assert {e["file_id"] for e in entries} == {"a" * 32}
        assert buf.stats().quarantined_lines == 3
        assert drain(buf) == good
    assert len(quarantine_entries(JsonlBuffer(path))) == 3


def test_batch_of_only_bad_lines_must_be_committed_to_advance(path: Path) -> None:
    _file_with(path, b"garbage\n", b"\n", line_of(greeks(1)))
    with JsonlBuffer(path) as buf:
        bad = buf.read_batch(2)
        assert bad.records == []
        assert bad.quarantined == 2
        assert bad.end > bad.start
        buf.commit(bad)
        assert [r.key for r in buf.read_batch(5).records] == ["g000001"]


def test_raw_and_full_paths_agree_on_what_is_broken(path: Path) -> None:
    good = line_of(greeks(1))
    obj = json.loads(good)
    data = obj["data"]
    old_version = dict(obj, key="old", data={k: v for k, v in data.items() if k != "delta"})
    broken = [
        dict(obj, data={k: v for k, v in data.items() if k != "account"}),
        dict(obj, data=dict(data, surprise=1)),
        dict(obj, data=dict(data, timestamp="2024-01-01T00:00:00")),
        dict(obj, type="header"),
        dict(obj, key=""),
        [1, 2],
    ]
    lines = [json.dumps(b).encode() + b"\n" for b in broken]
    lines.append(good[:-1] + b" trailing\n")
    _file_with(path, *lines, json.dumps(old_version).encode() + b"\n", good)
    with JsonlBuffer(path) as buf:
        raw = buf.read_raw_batch(100)
        full = buf.read_batch(100)
    assert raw.quarantined == full.quarantined == len(lines)
    assert [record_from_dict(line) for line in raw.lines] == full.records
    # A line of an older record shape is completed with the record's defaults.
    assert raw.lines[0]["data"]["delta"] is None
    assert [r.key for r in full.records] == ["old", "g000001"]


def test_torn_tail_is_quarantined_and_cut_off(path: Path) -> None:
    records = [greeks(n) for n in range(3)]
    with JsonlBuffer(path) as buf:
        buf.append(records[:2])
        intact = path.read_bytes()
    fragment = line_of(records[2])[:-7]
    with open(path, "ab") as f:
        f.write(fragment)
    with JsonlBuffer(path) as buf:
        assert any("torn line" in n for n in buf.notices)
        assert path.read_bytes() == intact
        entries = quarantine_entries(buf)
        assert [quarantined_raw(e) for e in entries] == [fragment]
        assert entries[0]["offset"] == len(intact)
        buf.append(records[2:])
        assert drain(buf) == records
    # Opening again finds nothing to repair and quarantines nothing twice.
    with JsonlBuffer(path) as buf:
        assert buf.notices == ()
        assert len(quarantine_entries(buf)) == 1


def test_torn_tail_that_lost_only_its_newline_is_quarantined(path: Path) -> None:
    with JsonlBuffer(path) as buf:
        buf.append([greeks(1)])
    with open(path, "ab") as f:
        f.write(line_of(greeks(2))[:-1])
    with JsonlBuffer(path) as buf:
        assert [r.key for r in drain(buf)] == ["g000001"]
        assert [json.loads(e["text"])["key"] for e in quarantine_entries(buf)] == ["g000002"]


def test_crash_during_tail_repair_does_not_quarantine_twice(path: Path) -> None:
    with JsonlBuffer(path) as buf:
        buf.append([greeks(1)])
    torn = path.read_bytes() + b'{"v":1,"ty'
    path.write_bytes(torn)
    with JsonlBuffer(path):
        pass
    path.write_bytes(torn)  # as if the truncate had not reached the disk
    with JsonlBuffer(path) as buf:
        assert len(quarantine_entries(buf)) == 1


def test_torn_quarantine_entry_does_not_swallow_the_next(path: Path) -> None:
    q = path.with_name(path.name + ".quarantine")
    q.write_bytes(b'{"file_id":"x","off')
    _file_with(path, b"junk\n", line_of(greeks(1)))
    with JsonlBuffer(path) as buf:
        assert buf.read_batch(5).quarantined == 1
        lines = q.read_bytes().split(b"\n")
        assert lines[0] == b'{"file_id":"x","off'
        assert json.loads(lines[1])["text"] == "junk"


def test_headerless_file_is_moved_to_quarantine(path: Path) -> None:
    legacy = [b'{"timestamp": "2024-01-01T00:00:00", "delta": 1.5}', b"", b"tail-no-newline"]
    path.write_bytes(b"\n".join(legacy))
    with JsonlBuffer(path) as buf:
        assert any("no ibkr-bridge header" in n for n in buf.notices)
        assert buf.is_empty
        assert not path.exists()
        entries = quarantine_entries(buf)
        assert [quarantined_raw(e) for e in entries] == legacy
        assert {e["file_id"] for e in entries} == {None}
        buf.append([greeks(1)])
        assert [r.key for r in drain(buf)] == ["g000001"]


def test_header_of_unknown_version_is_left_untouched(path: Path) -> None:
    content = b'{"v":3,"type":"header","file_id":"abc"}\n' + b"anything\n"
    path.write_bytes(content)
    buf = JsonlBuffer(path)
    with pytest.raises(BufferFormatError, match="header version 3"):
        buf.open()
    assert path.read_bytes() == content
    path.unlink()
    with JsonlBuffer(path) as again:  # the lock was released by the failed open
        assert again.is_empty


def test_empty_data_file_is_treated_as_missing(path: Path) -> None:
    path.write_bytes(b"")
    path.chmod(0o600)
    with JsonlBuffer(path) as buf:
        assert buf.is_empty
        assert buf.notices == ()
        assert not path.exists()


# -- permissions and locking ----------------------------------------------------------------


def test_files_are_private_and_parent_is_created(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "buf.jsonl"
    old_umask = os.umask(0)
    try:
        with JsonlBuffer(path) as buf:
            buf.append([greeks(1), greeks(2)])
            buf.commit(buf.read_batch(1))
            modes = {
                p.name: stat.S_IMODE(p.stat().st_mode)
                for p in (buf.path, buf.cursor_path, buf.lock_path)
            }
    finally:
        os.umask(old_umask)
    assert modes == dict.fromkeys(modes, 0o600)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_wider_modes_are_tightened_with_a_notice(path: Path) -> None:
    with JsonlBuffer(path) as buf:
        buf.append([greeks(1)])
    path.chmod(0o644)
    with JsonlBuffer(path) as buf:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert any("readable by others" in n and str(path) in n for n in buf.notices)


def test_quarantine_file_is_private(path: Path) -> None:
    _file_with(path, b"junk\n")
    old_umask = os.umask(0)
    try:
        with JsonlBuffer(path) as buf:
            buf.read_batch(1)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(buf.quarantine_path.stat().st_mode) == 0o600


def test_second_instance_in_this_process_is_refused(path: Path, buf: JsonlBuffer) -> None:
    with pytest.raises(BufferLockedError, match="another ibkr-bridge process is using"):
        JsonlBuffer(path).open()


def test_lock_excludes_another_process(path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys
                from pathlib import Path
                from ibkr_bridge.storage.buffer import JsonlBuffer
                with JsonlBuffer(Path(sys.argv[1])):
                    print("locked", flush=True)
                    sys.stdin.readline()
                """
            ),
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BufferLockedError) as info:
            JsonlBuffer(path).open()
        message = str(info.value)
        assert "another ibkr-bridge process is using" in message
        assert str(path) in message
        assert f"pid {holder.pid}" in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    with JsonlBuffer(path) as buf:  # released when the holder exited
        assert buf.is_empty


def test_closed_buffer_refuses_work(path: Path) -> None:
    buf = JsonlBuffer(path)
    with pytest.raises(RuntimeError, match="not open"):
        buf.append([greeks(1)])
    buf.open()
    buf.close()
    buf.close()
    with pytest.raises(RuntimeError, match="not open"):
        buf.read_batch(1)


# -- size cap and failed writes ---------------------------------------------------------------


def test_size_cap_refuses_whole_batch_and_keeps_the_file(path: Path) -> None:
    one = len(line_of(greeks(1)))
    with JsonlBuffer(path.with_name("probe.jsonl")) as probe:
        probe.append([greeks(0)])
        header = probe.stats().file_bytes - one
    with JsonlBuffer(path, max_bytes=header + 3 * one) as buf:
        buf.append([greeks(1), greeks(2)])
        before = path.read_bytes()
        with pytest.raises(BufferFullError, match="nothing was written"):
            buf.append([greeks(3), greeks(4)])
        assert path.read_bytes() == before
        buf.append([greeks(3)])  # exactly at the cap
        with pytest.raises(BufferFullError):
            buf.append([greeks(4)])
        assert [r.key for r in drain(buf)] == ["g000001", "g000002", "g000003"]
        buf.append([greeks(4)])  # room again once drained


def test_size_cap_counts_the_header_of_a_new_file(path: Path) -> None:
    one = len(line_of(greeks(1)))
    with JsonlBuffer(path, max_bytes=one) as buf, pytest.raises(BufferFullError):
        buf.append([greeks(1)])
    assert not path.exists()


def test_failed_fsync_rolls_the_append_back(
    path: Path, buf: JsonlBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    buf.append([greeks(1)])
    before = path.read_bytes()

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_jsonl, "_sync_data", failing_sync)  # where the appender calls it
    with pytest.raises(OSError, match="Input/output"):
        buf.append([greeks(2), greeks(3)])
    assert path.read_bytes() == before
    monkeypatch.undo()
    buf.append([greeks(4)])
    assert [r.key for r in drain(buf)] == ["g000001", "g000004"]


# -- introspection -------------------------------------------------------------------------


def test_stats_and_counts(buf: JsonlBuffer) -> None:
    empty = buf.stats()
    assert (empty.records_pending, empty.pending_bytes, empty.oldest, empty.newest) == (
        0,
        0,
        None,
        None,
    )
    records = [greeks(n) for n in range(5)]
    buf.append(records)
    buf.commit(buf.read_batch(2))
    stats = buf.stats()
    assert stats.records_pending == buf.count_pending() == 3
    assert stats.pending_bytes == buf.pending_bytes == sum(len(line_of(r)) for r in records[2:])
    assert stats.oldest == records[2].timestamp
    assert stats.newest == records[4].timestamp
    assert stats.quarantined_lines == 0
    assert stats.file_bytes > stats.pending_bytes


def test_stats_with_one_pending_line(buf: JsonlBuffer) -> None:
    buf.append([greeks(7)])
    stats = buf.stats()
    assert stats.oldest == stats.newest == greeks(7).timestamp


# -- property: random append / read / commit / crash sequences ---------------------------------


class BufferMachine(RuleBasedStateMachine):
    """A model of what must reach the database whatever happens to the process.

    Crashes are simulated at the process level: closing without committing, committing to
    the "database" and dying before the buffer's commit, and an append torn at a random byte
    (the partial line a crash mid-write leaves). Truncating acknowledged (fsync'd) data is not
    something a crash can do, so the torn appends are of records never acknowledged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="buffer-machine-"))
        self.path = self.dir / "buf.jsonl"
        self.buf = JsonlBuffer(self.path, fsync=False)
        self.buf.open()
        self.serial = 0
        self.acked: list[str] = []
        self.in_file: list[str] = []  # keys in file order, acknowledged or not
        self.db: list[str] = []  # every key the database received, replays included
        self.replayable: set[str] = set()
        self.pending: Batch | RawBatch | None = None
        # (file_id, offset, bytes, kind) of every line that must be in the quarantine.
        self.bad_lines: set[tuple[str, int, bytes, str]] = set()

    def _records(self, count: int) -> list[GreeksRow]:
        out = [greeks(self.serial + i) for i in range(count)]
        self.serial += count
        return out

    def _reopen(self) -> None:
        self.buf.close()
        self.pending = None
        self.buf = JsonlBuffer(self.path, fsync=False)
        self.buf.open()

    def _write_behind_its_back(self, data: bytes) -> tuple[str, int]:
        """Append raw bytes with the buffer closed; returns (file_id, offset written at)."""
        self.buf.close()
        with open(self.path, "rb") as f:
            file_id = json.loads(f.readline())["file_id"]
        size = self.path.stat().st_size
        with open(self.path, "ab") as f:
            f.write(data)
        return file_id, size

    @staticmethod
    def _keys(batch: Batch | RawBatch) -> list[str]:
        if isinstance(batch, Batch):
            return [r.key for r in batch.records]
        return [line["key"] for line in batch.lines]

    @initialize()
    def start(self) -> None:
        assert self.buf.is_empty

    @rule(count=st.integers(1, 4))
    def append(self, count: int) -> None:
        records = self._records(count)
        self.buf.append(records)
        keys = [r.key for r in records]
        self.acked += keys
        self.in_file += keys

    @rule(size=st.integers(1, 5), raw=st.booleans())
    def read(self, size: int, raw: bool) -> None:
        self.pending = self.buf.read_raw_batch(size) if raw else self.buf.read_batch(size)

    @precondition(lambda self: self.pending is not None)
    @rule()
    def commit(self) -> None:
        assert self.pending is not None
        self.db += self._keys(self.pending)
        self.buf.commit(self.pending)
        self.pending = None

    @precondition(lambda self: self.pending is not None)
    @rule()
    def crash_after_database_commit(self) -> None:
        assert self.pending is not None
        keys = self._keys(self.pending)
        self.db += keys
        self.replayable.update(keys)
        self._reopen()

    @rule()
    def crash(self) -> None:
        self._reopen()

    @precondition(lambda self: self.path.exists())
    @rule(count=st.integers(1, 3), cut=st.floats(0.0, 1.0, exclude_max=True))
    def torn_append(self, count: int, cut: float) -> None:
        records = self._records(count)
        payload = b"".join(line_of(r) for r in records)
        written = payload[: max(1, int(len(payload) * cut))]
        file_id, offset = self._write_behind_its_back(written)
        whole = written.count(b"\n")
        self.in_file += [r.key for r in records[:whole]]
        tail = written.rfind(b"\n") + 1
        if tail < len(written):
            self.bad_lines.add((file_id, offset + tail, written[tail:], "torn"))
        self._reopen()

    @precondition(lambda self: self.path.exists())
    @rule(junk=st.sampled_from([b"{", b"\xff\xfe", b"[]", b'{"v":1}', b""]))
    def corrupt_line(self, junk: bytes) -> None:
        # A line damaged on disk (or by hand) between two good ones.
        file_id, offset = self._write_behind_its_back(junk + b"\n")
        self.bad_lines.add((file_id, offset, junk, "unreadable"))
        self._reopen()

    @invariant()
    def pending_bytes_match_the_file(self) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        assert 0 <= self.buf.pending_bytes <= size

    def teardown(self) -> None:
        try:
            self._reopen()
            while not self.buf.is_empty:
                batch = self.buf.read_raw_batch(7)
                assert batch.end > batch.start, "pending bytes that no read can reach"
                self.db += self._keys(batch)
                self.buf.commit(batch)
            first_seen = list(dict.fromkeys(self.db))
            assert first_seen == self.in_file
            assert [k for k in first_seen if k in set(self.acked)] == self.acked
            doubled = {k for k, n in Counter(self.db).items() if n > 1}
            assert doubled <= self.replayable
            found = Counter(
                (e["file_id"], e["offset"], quarantined_raw(e), e["kind"])
                for e in quarantine_entries(self.buf)
            )
            assert set(found) == self.bad_lines
            assert set(found.values()) <= {1}
            assert not self.path.exists()
        finally:
            self.buf.close()
            shutil.rmtree(self.dir, ignore_errors=True)


TestBufferMachine = BufferMachine.TestCase
TestBufferMachine.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
