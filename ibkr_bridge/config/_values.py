"""Setting values: the enums, quoting limits and the strict string converter."""

from __future__ import annotations

import enum
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from datetime import time
from pathlib import Path
from typing import Any, Final, NewType

import cattrs

from ibkr_bridge.core.resetwindow import WeeklyWindow

#: Variables with these prefixes that are not settings are reported in ``unknown_keys``.
OUR_PREFIXES: Final = ("IB_", "IBKR_", "BRIDGE_")

#: Variables with our prefixes that other parts of the project read (not settings).
FOREIGN_KEYS: Final[Mapping[str, str]] = {
    "IBKR_BRIDGE_TEST_DSN": "PostgreSQL URL used by the test suite (ibkr_bridge.testing)",
}

_METADATA: Final = "ibkr_bridge.setting"
_REDACTED: Final = "***"

#: A value quoted in an error is cut to this many characters (its length is said instead).
SHOWN_CHARS: Final = 80
#: Longest raw text accepted for a setting that does not declare its own ``max_length``.
DEFAULT_MAX_LENGTH: Final = 256


def _show(value: Any) -> str:
    """``repr`` of a value for an error message, cut to about SHOWN_CHARS characters.

    The value is echoed so the user can find it, but a 10 KB value would bury the other
    problems; ``repr`` also escapes control characters, so a newline cannot forge a line.
    """
    if isinstance(value, Path):
        value = str(value)
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[: SHOWN_CHARS - 3]}...{size}"


class ApiMode(enum.StrEnum):
    """Which IBKR API the bridge talks to."""

    SOCKET = "SOCKET"
    PORTAL = "PORTAL"


class LogFormat(enum.StrEnum):
    """How log lines are written."""

    TEXT = "text"
    JSON = "json"


class MissingLegs(enum.StrEnum):
    """What is written while an option leg has no current Greeks (BRIDGE_MISSING_LEGS)."""

    SKIP = "skip"  # no row: a net never silently omits a leg
    PARTIAL = "partial"  # a row from the other legs, the missing ones in legs_missing


class GreeksFallback(enum.StrEnum):
    """Where a leg's Greeks come from when IB has not computed them (BRIDGE_GREEKS_FALLBACK)."""

    SKIP = "skip"  # none: the leg is missing (BRIDGE_MISSING_LEGS decides)
    MODEL = "model"  # Black-Scholes / Black-76 from IB's or the mid's implied volatility


LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# --- structuring strings into typed values ---------------------------------------------

# Parse-only types: a setting whose text has a shape its Python type does not tell.
_ByteSize = NewType("_ByteSize", int)
_Window = NewType("_Window", tuple[time, time])
_Upper = NewType("_Upper", str)
_Seconds = tuple[float, ...]

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_INT = re.compile(r"[+-]?[0-9]+")
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?")
_SIZE = re.compile(r"([0-9]+)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _structure_bool(value: str, _: Any) -> bool:
    word = value.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{_show(value)} is not a boolean (true/false, 1/0, yes/no, on/off)")


def _structure_int(value: str, _: Any) -> int:
    if not _INT.fullmatch(value):
        raise ValueError(f"{_show(value)} is not an integer")
    return int(value)


def _structure_float(value: str, _: Any) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{_show(value)} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{_show(value)} is not a finite number")
    return number


def _structure_enum(value: str, kind: type[enum.Enum]) -> enum.Enum:
    # ASCII only: str.lower would let look-alikes such as the long s through.
    if value.isascii():
        for member in kind:
            if str(member.value).lower() == value.lower():
                return member
    allowed = ", ".join(str(member.value) for member in kind)
    raise ValueError(f"{_show(value)} is not one of {allowed}")


def _structure_path(value: str, _: Any) -> Path:
    try:
        return Path(value).expanduser()
    except RuntimeError:  # "~someone" naming no known user
        raise ValueError(f"{_show(value)}: cannot expand '~' (no such user or home)") from None


def _parse_time(value: str, *, end_of_minute: bool = False) -> time:
    match = _TIME.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{_show(value)} is not a time of day (HH:MM)")
    hour, minute = int(match[1]), int(match[2])
    second = int(match[3]) if match[3] is not None else (59 if end_of_minute else 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{_show(value)} is not a time of day (HH:MM, 00:00 to 23:59)")
    return time(hour, minute, second)


def _structure_time(value: str, _: Any) -> time:
    return _parse_time(value)


def _structure_window(value: str, _: Any) -> tuple[time, time]:
    parts = value.split("-")
    if len(parts) != 2:
        raise ValueError(f"{_show(value)} is not a window HH:MM-HH:MM")
    # An end written as HH:MM covers that whole minute: "23:59" ends at 23:59:59.
    return _parse_time(parts[0]), _parse_time(parts[1], end_of_minute=True)


def _structure_seconds(value: str, _: Any) -> tuple[float, ...]:
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ValueError(f"{_show(value)} has an empty item (expected seconds like 5,10,20)")
    return tuple(_structure_float(item, float) for item in items)


def _structure_size(value: str, _: Any) -> int:
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"{_show(value)} is not a size in bytes (e.g. 1073741824, 512M, 1G)")
    return int(match[1]) * _SIZE_UNITS[(match[2] or "").lower()]


def _structure_upper(value: str, _: Any) -> str:
    return value.upper()


_NO_WINDOW: Final = frozenset({"off", "none"})


def _structure_weekly(value: str, _: Any) -> WeeklyWindow | None:
    if value.lower() in _NO_WINDOW:
        return None
    return WeeklyWindow.parse(value)


def _is_optional(kind: Any) -> bool:
    args = typing.get_args(kind)
    return (
        typing.get_origin(kind) in (typing.Union, types.UnionType)
        and len(args) == 2
        and type(None) in args
    )


def _optional_hook(kind: Any) -> Callable[[str, Any], Any]:
    inner = next(arg for arg in typing.get_args(kind) if arg is not type(None))

    def structure(value: str, _: Any) -> Any:
        return None if value == "" else _converter.structure(value, inner)

    return structure


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(Path, _structure_path)
    converter.register_structure_hook(time, _structure_time)
    converter.register_structure_hook(_Window, _structure_window)
    converter.register_structure_hook(_ByteSize, _structure_size)
    converter.register_structure_hook(_Upper, _structure_upper)
    converter.register_structure_hook(WeeklyWindow, _structure_weekly)
    converter.register_structure_hook_func(lambda t: t == _Seconds, _structure_seconds)
    # By class: a StrEnum is also a str, so a predicate hook would lose to the str hook.
    for kind in (ApiMode, LogFormat, MissingLegs, GreeksFallback):
        converter.register_structure_hook(kind, _structure_enum)
    converter.register_structure_hook_factory(_is_optional, _optional_hook)
    return converter


_converter: Final = _make_converter()
