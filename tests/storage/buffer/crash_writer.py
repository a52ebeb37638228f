"""Crash-test helper: appends numbered records to a JsonlBuffer and drains them into a sink.

Run as a subprocess by ``test_buffer_crash.py``, which kills it with SIGKILL at random
moments and starts it again. Files (all in one directory):

- the buffer (``--buffer``), fsync'd as in production;
- ``--acks``: one number per line, appended and fsync'd only after ``append`` returned, so a
  number there is a record the buffer acknowledged;
- ``--sink``: the "database": one key per line, appended and fsync'd before the buffer's
  cursor is committed, skipping keys already there (the idempotent insert a key makes).

A line without its newline in ``--acks`` or ``--sink`` is a write the kill interrupted: it
never happened, so it is cut off at startup.
"""

from __future__ import annotations

import argparse
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ibkr_bridge.core.records import GreeksRow
from ibkr_bridge.storage.buffer import Batch, JsonlBuffer, RawBatch

EPOCH = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def key_of(number: int) -> str:
    return f"k{number:08d}"


def make_record(number: int) -> GreeksRow:
    return GreeksRow(
        timestamp=EPOCH + timedelta(seconds=5 * number),
        account="U1",
        api_mode="SOCKET",
        delta=number * 0.1,
        legs=number % 7,
        key=key_of(number),
    )


def complete_lines(path: Path) -> list[str]:
    """The file's complete lines, after cutting off a torn last one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with path.open("r+b") as handle:
            handle.truncate(keep)
            os.fsync(handle.fileno())
    return data[:keep].decode().splitlines()


def append_synced(path: Path, lines: list[str]) -> None:
    if not lines:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, "".join(f"{line}\n" for line in lines).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class Writer:
    def __init__(self, buffer: JsonlBuffer, sink: Path, acks: Path) -> None:
        self.buffer = buffer
        self.sink = sink
        self.acks = acks
        self.in_sink = set(complete_lines(sink))
        acked = complete_lines(acks)
        self.next_number = int(acked[-1]) + 1 if acked else 0

    def append(self, count: int) -> None:
        numbers = range(self.next_number, self.next_number + count)
        self.buffer.append([make_record(n) for n in numbers])
        append_synced(self.acks, [str(n) for n in numbers])
        self.next_number += count

    def drain_one(self, max_records: int, raw: bool) -> None:
        batch: Batch | RawBatch
        if raw:
            batch = self.buffer.read_raw_batch(max_records)
            keys = [line["key"] for line in batch.lines]
        else:
            batch = self.buffer.read_batch(max_records)
            keys = [record.key for record in batch.records]
        # A batch may hold a key twice (re-appended after a kill before its ack).
        fresh = list(dict.fromkeys(k for k in keys if k not in self.in_sink))
        append_synced(self.sink, fresh)  # the database commit
        self.in_sink.update(fresh)
        self.buffer.commit(batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--buffer", type=Path, required=True)
    parser.add_argument("--sink", type=Path, required=True)
    parser.add_argument("--acks", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drain-only", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with JsonlBuffer(args.buffer) as buffer:
        writer = Writer(buffer, args.sink, args.acks)
        # The test times its kill from here, not from process start: a loaded machine's
        # slow imports would otherwise eat the whole window and prove nothing.
        print("ready", flush=True)
        while not args.drain_only:
            # Large batches make multi-page writes, which a SIGKILL can tear.
            writer.append(rng.choice([1, 2, 3, 5, 40, 150]))
            if rng.random() < 0.6:
                writer.drain_one(rng.choice([1, 4, 60, 500]), raw=rng.random() < 0.7)
        while not buffer.is_empty:
            writer.drain_one(500, raw=True)


if __name__ == "__main__":
    main()
