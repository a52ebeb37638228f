"""Decoding buffer lines into COPY tuples: the stdlib, orjson and msgspec, in one run.

Each decoder turns the same checksummed buffer lines into the tuples
:meth:`~ibkr_bridge.storage.store.Store.write_tuples` COPYs, with the same checks:

``stdlib``
    The reference path the drain used before: ``json`` decoding, the records' own
    validators field by field, ``split_raw`` (timestamps by ``datetime.fromisoformat``).
``orjson``
    The same path with ``orjson.loads`` in place of the stdlib decoder (the validators and
    ``split_raw`` are Python either way): what swapping the JSON library alone buys.
``msgspec``
    The drain's decoder (:class:`~ibkr_bridge.storage.buffer._copy.CopyDecoder`): one call
    per line decodes into a typed record whose types and field set msgspec checks in C.

Reported as CPU microseconds per line (best of ``repeat``, process time, so other load on
the machine counts less) and the rows/s that makes on one core.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from unittest import mock

from ibkr_bridge.core.errors import RecordFormatError
from ibkr_bridge.storage.buffer import _format
from ibkr_bridge.storage.buffer._copy import CopyDecoder
from ibkr_bridge.storage.store import split_raw


def _stdlib(lines: Sequence[bytes]) -> int:
    parse = _format._parse_raw_line
    greeks, _ = split_raw([parse(line, True) for line in lines])
    return len(greeks)


def _orjson_loader() -> Callable[[bytes], dict[str, Any]] | None:
    try:
        import orjson
    except ImportError:
        return None

    def loads(line: bytes) -> dict[str, Any]:
        obj = orjson.loads(line)
        if not isinstance(obj, dict):
            raise RecordFormatError("a buffer line must be a JSON object")
        return obj

    return loads


def _msgspec(lines: Sequence[bytes]) -> int:
    decoder = CopyDecoder(True)
    decoder.decode(lines, 0, len(lines))
    return len(decoder.greeks)


def _best(run: Callable[[], int], repeat: int, expected: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        if run() != expected:
            raise SystemExit("a decoder returned the wrong number of rows")
        best = min(best, time.process_time() - start)
    return best


def compare(lines: Sequence[bytes], repeat: int = 3) -> dict[str, float]:
    """CPU µs per line of each decoder, printed as it goes."""
    results: dict[str, float] = {}
    n = len(lines)
    runs: dict[str, Callable[[], int]] = {
        "stdlib": lambda: _stdlib(lines),
        "msgspec": lambda: _msgspec(lines),
    }
    loads = _orjson_loader()
    if loads is not None:

        def with_orjson() -> int:
            # The reference path, orjson decoding.
            with mock.patch.object(_format, "_loads_object", loads):
                return _stdlib(lines)

        runs["orjson"] = with_orjson
    for name in ("stdlib", "orjson", "msgspec"):
        if name not in runs:
            print(f"decoder {name}: not installed (pip install {name})", flush=True)
            continue
        us = _best(runs[name], repeat, n) / n * 1e6
        results[name] = us
        print(
            f"decoder {name}: {us:.2f} CPU us/line ({1e6 / us:,.0f} rows/s on one core)",
            flush=True,
        )
    return results
