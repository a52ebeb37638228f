"""TWS API wire format: framing, field encoding, and the messages the simulator sends.

Every message is a 4-byte big-endian length and a body of ``\\0``-terminated fields.
The builders here produce exactly the field lists ib_async 2.1.0's ``decoder.py`` reads
for a given server version; the version-dependent ones take it as their first argument.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from typing import Final

from attrs import frozen

from ibkr_bridge.sim.portfolio import Instrument

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


class FrameError(ValueError):
    """The peer sent something that is not a TWS API frame."""


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


# -- server → client messages ---------------------------------------------------------------


def handshake_reply(version: int, connection_time: str) -> bytes:
    return encode([version, connection_time])


def error(version: int, req_id: int, code: int, message: str, advanced: str = "") -> bytes:
    fields: list[Field] = [4, 2, req_id, code, message]
    if version >= V_ADVANCED_REJECT:
        fields.append(advanced)
    return encode(fields)


def managed_accounts(accounts: Sequence[str]) -> bytes:
    return encode([15, 1, ",".join(accounts)])


def next_valid_id(order_id: int) -> bytes:
    return encode([9, 1, order_id])


def current_time(epoch_seconds: int) -> bytes:
    return encode([49, 1, epoch_seconds])


def _strike(inst: Instrument) -> float:
    return inst.strike if inst.strike is not None else 0.0


def position(account: str, inst: Instrument, quantity: float, avg_cost: float) -> bytes:
    # Positions come with an empty exchange, as from a real Gateway.
    return encode(
        [
            61,
            3,
            account,
            inst.conid,
            inst.symbol,
            inst.sec_type,
            inst.expiry or "",
            _strike(inst),
            inst.right or "",
            inst.wire_multiplier,
            "",
            inst.currency,
            inst.local_symbol,
            inst.trading_class,
            quantity,
            avg_cost,
        ]
    )


def position_end() -> bytes:
    return encode([62, 1])


def account_value(key: str, value: str, currency: str, account: str) -> bytes:
    return encode([6, 2, key, value, currency, account])


def portfolio_value(
    inst: Instrument,
    quantity: float,
    market_price: float,
    market_value: float,
    avg_cost: float,
    unrealized_pnl: float,
    realized_pnl: float,
    account: str,
) -> bytes:
    return encode(
        [
            7,
            8,
            inst.conid,
            inst.symbol,
            inst.sec_type,
            inst.expiry or "",
            _strike(inst),
            inst.right or "",
            inst.wire_multiplier,
            inst.primary_exchange,
            inst.currency,
            inst.local_symbol,
            inst.trading_class,
            quantity,
            market_price,
            market_value,
            avg_cost,
            unrealized_pnl,
            realized_pnl,
            account,
        ]
    )


def account_time(hhmm: str) -> bytes:
    return encode([8, 1, hhmm])


def account_download_end(account: str) -> bytes:
    return encode([54, 1, account])


def account_update_multi(
    req_id: int, account: str, model: str, key: str, value: str, currency: str
) -> bytes:
    return encode([73, 1, req_id, account, model, key, value, currency])


def account_update_multi_end(req_id: int) -> bytes:
    return encode([74, 1, req_id])


def account_summary(req_id: int, account: str, tag: str, value: str, currency: str) -> bytes:
    return encode([63, 1, req_id, account, tag, value, currency])


def account_summary_end(req_id: int) -> bytes:
    return encode([64, 1, req_id])


def exec_details_end(req_id: int) -> bytes:
    return encode([55, 1, req_id])


def open_order_end() -> bytes:
    return encode([53, 1])


def completed_orders_end() -> bytes:
    # No version field: ib_async reads it with skip=1.
    return encode([102])


def market_data_type(req_id: int, data_type: int) -> bytes:
    return encode([58, 1, req_id, data_type])


def tick_req_params(req_id: int, min_tick: float, bbo_exchange: str, permissions: int) -> bytes:
    return encode([81, req_id, min_tick, bbo_exchange, permissions])


def tick_price(req_id: int, tick_type: int, price: float, size: float, attr_mask: int = 0) -> bytes:
    return encode([1, 6, req_id, tick_type, price, size, attr_mask])


def tick_size(req_id: int, tick_type: int, size: float) -> bytes:
    return encode([2, 6, req_id, tick_type, size])


def tick_option_computation(
    req_id: int,
    tick_type: int,
    tick_attrib: int,
    implied_vol: Field,
    delta: Field,
    opt_price: Field,
    pv_dividend: Field,
    gamma: Field,
    vega: Field,
    theta: Field,
    und_price: Field,
) -> bytes:
    # No version field from server version 156 on.
    return encode(
        [
            21,
            req_id,
            tick_type,
            tick_attrib,
            implied_vol,
            delta,
            opt_price,
            pv_dividend,
            gamma,
            vega,
            theta,
            und_price,
        ]
    )


def tick_snapshot_end(req_id: int) -> bytes:
    return encode([57, 1, req_id])


@frozen(kw_only=True)
class DetailsExtra:
    """The contractDetails fields an :class:`Instrument` does not carry."""

    min_tick: float
    long_name: str
    valid_exchanges: str
    trading_hours: str
    liquid_hours: str
    order_types: str = "LMT,MKT,STP,STPLMT,TRAIL"
    time_zone: str = "US/Eastern"
    stock_type: str = ""
    under_symbol: str = ""
    under_sec_type: str = ""
    market_rule_ids: str = "26"


def contract_details(version: int, req_id: int, inst: Instrument, extra: DetailsExtra) -> bytes:
    fields: list[Field] = [10]
    if version < V_SIZE_RULES:
        fields.append(8)
    fields += [
        req_id,
        inst.symbol,
        inst.sec_type,
        inst.expiry or "",
        _strike(inst),
        inst.right or "",
        inst.exchange,
        inst.currency,
        inst.local_symbol,
        inst.trading_class,  # marketName
        inst.trading_class,
        inst.conid,
        extra.min_tick,
    ]
    if version < V_SIZE_RULES:
        fields.append(1)  # mdSizeMultiplier, obsolete
    fields += [
        inst.wire_multiplier,
        extra.order_types,
        extra.valid_exchanges,
        1,  # priceMagnifier
        inst.underlying_conid or 0,
        extra.long_name,
        inst.primary_exchange,
        (inst.expiry or "")[:6],  # contractMonth
        "",  # industry
        "",  # category
        "",  # subcategory
        extra.time_zone,
        extra.trading_hours,
        extra.liquid_hours,
        "",  # evRule
        "",  # evMultiplier
        0,  # no secIds
        1,  # aggGroup
        extra.under_symbol,
        extra.under_sec_type,
        extra.market_rule_ids,
        inst.expiry or "",  # realExpirationDate
        extra.stock_type,
    ]
    if version == V_SUGGESTED_SIZE_INCREMENT:
        fields.append(1)
    if version >= V_SIZE_RULES:
        fields += [1, 1, 1]  # minSize, sizeIncrement, suggestedSizeIncrement
    return encode(fields)


def contract_details_end(req_id: int) -> bytes:
    return encode([52, 1, req_id])
