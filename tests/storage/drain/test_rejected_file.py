"""RejectedFile's file handling: appends that race a replay's rewrite, the read-only summary."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ibkr_bridge.storage.drain import RejectedFile, RejectedFileChangedError


def keys(path: Path) -> list[str]:
    return [json.loads(line)["record"] for line in path.read_text().splitlines()]


def test_an_append_that_finds_its_file_replaced_goes_to_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rejects = RejectedFile(tmp_path / "buffer.jsonl")
    rejects("first", "e")
    real_flock = fcntl.flock
    replaced: list[int] = []

    def flock(fd: int, op: int) -> Any:
        # The appender opened the old file; before it gets the lock, a replay renames the
        # rewritten file over it (as RejectedFile.replace does).
        if not replaced:
            new = tmp_path / "new"
            new.write_text(json.dumps({"error": "e", "record": "kept"}) + "\n")
            os.replace(new, rejects.path)
            replaced.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    rejects("second", "e")
    assert replaced
    assert keys(rejects.path) == ["kept", "second"]  # not lost in the unlinked old file


def test_replace_refuses_a_file_moved_away_meanwhile(tmp_path: Path) -> None:
    rejects = RejectedFile(tmp_path / "buffer.jsonl")
    rejects("first", "e")
    found = rejects.snapshot()
    assert found is not None
    fd, snapshot = found
    os.close(fd)
    replacement = rejects.open_replacement()
    os.rename(rejects.path, tmp_path / "set-aside")  # the operator moved it (docs: safe)
    rejects("new", "e")  # the bridge starts a new one
    with pytest.raises(RejectedFileChangedError):
        rejects.replace(snapshot, replacement)
    assert keys(rejects.path) == ["new"]
    assert keys(tmp_path / "set-aside") == ["first"]


def test_a_second_replay_is_refused_while_one_runs(tmp_path: Path) -> None:
    rejects = RejectedFile(tmp_path / "buffer.jsonl")
    held = rejects.open_replacement()
    try:
        with pytest.raises(BlockingIOError):
            rejects.open_replacement()
    finally:
        os.close(held)


def test_summary_counts_entries_and_reads_the_oldest(tmp_path: Path) -> None:
    rejects = RejectedFile(tmp_path / "buffer.jsonl")
    assert rejects.summary().records == 0
    assert not rejects.path.exists()
    rejects("a", "first reason\nDETAIL: the row")
    rejects("b", "second reason")
    with rejects.path.open("ab") as f:
        f.write(b"a torn last line without its newline")
    found = rejects.summary()
    assert found.records == 3
    assert found.oldest_error == "first reason\nDETAIL: the row"
    assert found.oldest_at is not None
    assert rejects.path.stat().st_mode & 0o777 == 0o600


def test_summary_of_a_file_whose_first_line_is_garbage(tmp_path: Path) -> None:
    rejects = RejectedFile(tmp_path / "buffer.jsonl")
    rejects.path.write_bytes(b"[" * 100_000 + b"\n" + b"\xff\xfe\n")
    found = rejects.summary()
    assert (found.records, found.oldest_error, found.oldest_at) == (2, None, None)
