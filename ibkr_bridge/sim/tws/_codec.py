"""TWS API wire format: framing, field encoding, the handshake and request parsing.

Every message is a 4-byte big-endian length and a body of ``\\0``-terminated fields.
The messages the simulator sends are built in :mod:`._messages` on top of this.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from typing import Final

from attrs import frozen

MIN_VERSION: Final = 157
MAX_VERSION: Final = 178
# Server versions at which ib_async's decoder changes what it reads.
V_SUGGESTED_SIZE_INCREMENT: Final = 163
V_SIZE_RULES: Final = 164  # contractDetails loses its version and mdSizeMultiplier fields
V_ADVANCED_REJECT: Final = 166  # error gains advancedOrderRejectJson

API_PREFIX: Final = b"API\0"
MAX_FRAME: Final = 16 * 1024 * 1024

# IBKR's "unset double" and the Java spelling a Gateway would put on the wire.
UNSET_DOUBLE: Final = 1.7976931348623157e308
UNSET_DOUBLE_TEXT: Final = "1.7976931348623157E308"

Field = str | int | float | bool | None


from ibkr_bridge.core.errors import FrameError as FrameError  # noqa: E402


def fmt(value: Field) -> str:
    """One field as text: bools as 1/0, None as empty, integral floats without ``.0``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value == UNSET_DOUBLE:
            return UNSET_DOUBLE_TEXT
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(value)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def encode(fields: Sequence[Field]) -> bytes:
    """A framed message: each field ``\\0``-terminated, so the last one survives splitting."""
    return frame("".join(fmt(f) + "\0" for f in fields).encode("utf-8"))


def split_fields(body: bytes) -> list[str]:
    fields = body.decode("utf-8", errors="replace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


class FrameBuffer:
    """Reassembles frames from a byte stream (for raw-socket clients and tests)."""

    def __init__(self) -> None:
        self._data = b""

    def feed(self, data: bytes) -> list[list[str]]:
        self._data += data
        out: list[list[str]] = []
        while len(self._data) >= 4:
            (size,) = struct.unpack(">I", self._data[:4])
            if size > MAX_FRAME:
                raise FrameError(f"frame of {size} bytes")
            if len(self._data) < 4 + size:
                break
            out.append(split_fields(self._data[4 : 4 + size]))
            self._data = self._data[4 + size :]
        return out


_HANDSHAKE = re.compile(r"^v(\d+)(?:\.\.(\d+))?(?:\s.*)?$", re.DOTALL)


def parse_handshake(body: bytes) -> tuple[int, int]:
    """``v157..178 +PACEAPI`` → (157, 178); ``v100`` → (100, 100)."""
    match = _HANDSHAKE.match(body.decode("ascii", errors="replace").strip("\0"))
    if match is None:
        raise FrameError(f"not a version range: {body[:40]!r}")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) else low
    if low > high:
        raise FrameError(f"empty version range {low}..{high}")
    return low, high


def negotiate(
    client_min: int, client_max: int, server_min: int = MIN_VERSION, server_max: int = MAX_VERSION
) -> int | None:
    """The highest version both sides support, or None when the ranges do not overlap."""
    best = min(client_max, server_max)
    return best if best >= max(client_min, server_min) else None


@frozen(kw_only=True)
class ContractSpec:
    """The 12 contract fields of a client request, parsed."""

    con_id: int
    symbol: str
    sec_type: str
    expiry: str
    strike: float
    right: str
    multiplier: str
    exchange: str
    primary_exchange: str
    currency: str
    local_symbol: str
    trading_class: str


def _num(text: str, kind: type[int] | type[float]) -> int | float:
    text = text.strip()
    if not text:
        return kind(0)
    return kind(float(text)) if kind is int else kind(text)


def parse_contract(fields: Sequence[str], start: int) -> tuple[ContractSpec, int]:
    """Parse the 12 contract fields at ``start``; returns the spec and the next index."""
    f = list(fields[start : start + 12])
    if len(f) < 12:
        raise IndexError("contract needs 12 fields")
    spec = ContractSpec(
        con_id=int(_num(f[0], int)),
        symbol=f[1],
        sec_type=f[2],
        expiry=f[3],
        strike=float(_num(f[4], float)),
        right=f[5],
        multiplier=f[6],
        exchange=f[7],
        primary_exchange=f[8],
        currency=f[9],
        local_symbol=f[10],
        trading_class=f[11],
    )
    return spec, start + 12
