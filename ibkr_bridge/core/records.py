"""The kinds of record the bridge stores, and their JSON form.

Net Greeks rows, ``api_logs`` events and per-position rows (``position_greeks``) are frozen
attrs records carrying their own idempotency ``key``: the same record written twice (a
replayed buffer line, a retried commit whose reply was lost) is a no-op in the database
because the key column is unique.

The JSON form is what the crash-safe buffer holds, one object per line::

    {"v": 1, "type": "greeks", "key": "...", "data": {...}}

Timestamps are ISO 8601 with offset and floats are written with ``repr`` precision, so a
record read back equals the one written (``None`` stays ``None``).
"""

from __future__ import annotations

import json
import math
import types
import typing
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Literal

import attrs
from attrs import field, frozen

SCHEMA_VERSION: Final = 1

Status = Literal["info", "warning", "error"]
STATUSES: Final = ("info", "warning", "error")


def new_key() -> str:
    """A fresh idempotency key."""
    return uuid.uuid4().hex


def _aware(_: Any, attribute: attrs.Attribute[Any], value: datetime) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{attribute.name} must be a timezone-aware datetime, got {value!r}")


def _finite_or_none(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    # A Greek that is NaN or infinite is not data: it must arrive here as None.
    if value is not None and (isinstance(value, bool) or not math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number or None, got {value!r}")


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@frozen(kw_only=True)
class GreeksRow:
    """Net Greeks of the portfolio (``portfolio_greeks``) or one underlying (``underlying_greeks``).

    The table follows from ``contract`` alone (see :mod:`ibkr_bridge.storage.store`).
    """

    timestamp: datetime = field(validator=_aware)
    account: str
    api_mode: str
    contract: str = "PORTFOLIO"
    delta: float | None = field(default=None, converter=_float_or_none, validator=_finite_or_none)
    gamma: float | None = field(default=None, converter=_float_or_none, validator=_finite_or_none)
    vega: float | None = field(default=None, converter=_float_or_none, validator=_finite_or_none)
    theta: float | None = field(default=None, converter=_float_or_none, validator=_finite_or_none)
    underlying_price: float | None = field(
        default=None, converter=_float_or_none, validator=_finite_or_none
    )
    dollar_delta: float | None = field(
        default=None, converter=_float_or_none, validator=_finite_or_none
    )
    legs: int = 0
    legs_missing: int = 0
    legs_model: int = 0  # option legs counted with model Greeks (BRIDGE_GREEKS_FALLBACK)
    key: str = field(factory=new_key)

    type: ClassVar[Literal["greeks"]] = "greeks"


@frozen(kw_only=True)
class ApiEvent:
    """One row of ``api_logs``: a lifecycle event (connect, transition, error, ...)."""

    timestamp: datetime = field(validator=_aware)
    api_mode: str
    event: str
    message: str
    status: Status = field(default="info", validator=attrs.validators.in_(STATUSES))
    machine: str | None = None
    source_state: str | None = None
    dest_state: str | None = None
    detail: Mapping[str, Any] = field(factory=dict)
    key: str = field(factory=new_key)

    type: ClassVar[Literal["api_log"]] = "api_log"


def _opt_float() -> Any:
    """A float column that may be NULL, never NaN or infinite (as in GreeksRow)."""
    return field(default=None, converter=_float_or_none, validator=_finite_or_none)


@frozen(kw_only=True)
class PositionRow:
    """One leg of one tick: the position's share of the net Greeks (``position_greeks``)."""

    timestamp: datetime = field(validator=_aware)
    account: str
    api_mode: str
    conid: int
    symbol: str  # the contract's own symbol (local symbol), else the underlying's
    underlying: str
    sec_type: str
    right: str | None = None
    strike: float | None = _opt_float()
    expiry: str | None = None
    multiplier: float = 1.0
    position: float
    delta: float | None = _opt_float()  # position * multiplier * per-share delta
    gamma: float | None = _opt_float()
    vega: float | None = _opt_float()
    theta: float | None = _opt_float()
    unit_delta: float | None = _opt_float()  # IB's (or the model's) per-share Greeks
    unit_gamma: float | None = _opt_float()
    unit_vega: float | None = _opt_float()
    unit_theta: float | None = _opt_float()
    implied_vol: float | None = _opt_float()
    underlying_price: float | None = _opt_float()
    greeks_source: str | None = None  # "ib", "model", or None when the leg has none
    key: str

    type: ClassVar[Literal["position"]] = "position"


Record = GreeksRow | ApiEvent | PositionRow

_GREEKS_FIELDS: Final = tuple(a.name for a in attrs.fields(GreeksRow) if a.name != "key")
_EVENT_FIELDS: Final = tuple(a.name for a in attrs.fields(ApiEvent) if a.name != "key")
_POSITION_FIELDS: Final = tuple(a.name for a in attrs.fields(PositionRow) if a.name != "key")
_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "greeks": _GREEKS_FIELDS,
    "api_log": _EVENT_FIELDS,
    "position": _POSITION_FIELDS,
}


def _json_check(hint: Any) -> tuple[tuple[type, ...], bool] | None:
    """The JSON values a field of type ``hint`` takes: (types, finite floats only), or None
    when the field's own validator judges it (timestamps, statuses)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    allowed: list[type] = [type(None)] if type(None) in args else []
    kinds = [a for a in args if a is not type(None)]
    if kinds == [str]:
        return (*allowed, str), False
    if kinds == [int]:
        return (*allowed, int), False
    if kinds == [float]:
        return (*allowed, int, float), True
    if kinds and typing.get_origin(kinds[0]) is Mapping:
        return (*allowed, dict), False
    return None


# Per record type, what a buffer line's value of each field without a converter must be
# (a converted Greek takes "12.5", as the live record does). A live record's
# types are the code's (mypy checks them); a line read from disk is checked here, so a
# NaN account or a string count is refused as the line's bad data and never reaches a COPY.
_JSON_TYPES: Final[Mapping[str, tuple[tuple[str, tuple[type, ...], bool], ...]]] = {
    cls.type: tuple(
        (name, *check)
        for name, hint in typing.get_type_hints(cls).items()
        if name in _FIELDS[cls.type]
        and attrs.fields_dict(cls)[name].converter is None  # a converter judges its own
        and (check := _json_check(hint))
    )
    for cls in (GreeksRow, ApiEvent, PositionRow)
}


def check_json_types(kind: str, data: Mapping[str, Any]) -> None:
    """Raise RecordFormatError if a value in a line's ``data`` is not of its field's type
    (a bool is not a number; a float field is finite). Absent fields are left to defaults."""
    for name, allowed, finite in _JSON_TYPES.get(kind, ()):
        if name not in data:
            continue
        value = data[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, allowed)
            or (finite and isinstance(value, float) and not math.isfinite(value))
        ):
            what = "a finite number" if finite else _NAMES[allowed[-1]]
            what += " or None" if type(None) in allowed else ""
            raise RecordFormatError(f"bad {kind} record: {name} must be {what}, got {value!r}")


_NAMES: Final[Mapping[type, str]] = {str: "a string", int: "an integer", dict: "an object"}


def record_to_dict(record: Record) -> dict[str, Any]:
    """The JSON-ready form of a record (one buffer line)."""
    names = _FIELDS[record.type]
    data: dict[str, Any] = {}
    for name in names:
        value = getattr(record, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Mapping):
            value = dict(value)
        data[name] = value
    return {"v": SCHEMA_VERSION, "type": record.type, "key": record.key, "data": data}


def record_to_json(record: Record) -> str:
    """One compact JSON line (without the newline)."""
    return json.dumps(record_to_dict(record), separators=(",", ":"), allow_nan=False)


from ibkr_bridge.core.errors import RecordFormatError as RecordFormatError  # noqa: E402


def record_from_dict(obj: Mapping[str, Any]) -> Record:
    """Rebuild a record from :func:`record_to_dict` output; raises RecordFormatError."""
    try:
        version = obj["v"]
        kind = obj["type"]
        key = obj["key"]
        data = dict(obj["data"])
    except (KeyError, TypeError) as exc:
        raise RecordFormatError(f"not a buffer record: missing {exc}") from None
    if version != SCHEMA_VERSION:
        raise RecordFormatError(f"unknown record schema version {version!r}")
    if not isinstance(key, str) or not key:
        raise RecordFormatError("record key must be a non-empty string")
    check_json_types(kind, data)
    try:
        data["timestamp"] = datetime.fromisoformat(data["timestamp"])
        if kind == "greeks":
            return GreeksRow(key=key, **data)
        if kind == "api_log":
            return ApiEvent(key=key, **data)
        if kind == "position":
            return PositionRow(key=key, **data)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordFormatError(f"bad {kind} record: {exc}") from None
    raise RecordFormatError(f"unknown record type {kind!r}")


def record_from_json(line: str | bytes) -> Record:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordFormatError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordFormatError("a buffer line must be a JSON object")
    return record_from_dict(obj)


def utcnow() -> datetime:
    return datetime.now(UTC)
