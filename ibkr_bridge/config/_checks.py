"""Rules on typed setting values and the bounds declared on each setting."""

from __future__ import annotations

import enum
import math
import unicodedata
from collections.abc import Callable
from datetime import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from attrs import frozen

from ibkr_bridge.config._values import _SIZE_UNITS, LOG_LEVELS, SHOWN_CHARS, _show
from ibkr_bridge.core.resetwindow import WeeklyWindow

if TYPE_CHECKING:
    from ibkr_bridge.config._keys import SettingKey  # the declarations use these checks

# --- rules on typed values (also run when a record is built or evolved) ----------------

Check = Callable[[Any], None]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive(value: Any) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{_show(value)} must be a finite number > 0")


def _finite(value: Any) -> None:
    if not (_is_number(value) and math.isfinite(value)):
        raise ValueError(f"{_show(value)} must be a finite number")


def _boolean(value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not a boolean")


def _int_range(low: int, high: int | None = None) -> Check:
    # Kept for declarations not yet moved to ``bounds=``; a Bounds also documents the range.
    def check(value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{_show(value)} is not an integer")
        if value < low or (high is not None and value > high):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(f"{_show(value)} is out of range ({span})")

    return check


def _optional(check: Check) -> Check:
    def optional_check(value: Any) -> None:
        if value is not None:
            check(value)

    return optional_check


def _integer(value: Any) -> None:
    # The range is the field's Bounds; this only refuses what is not an int (bool included).
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not an integer")


def _client_id(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        if value == 0:
            raise ValueError(
                "0 is refused: clientId 0 belongs to the trader's own IBKR app "
                "(TWS or mobile); choose another id such as 10"
            )
        if value < 0:
            raise ValueError(f"{value} is negative; client ids are positive integers")
    _integer(value)


def _host(value: Any) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() or c == "/" for c in value):
        raise ValueError(f"{_show(value)} is not a host name or address")


def _account(value: Any) -> None:
    if not isinstance(value, str) or not value.isascii() or not value.isalnum():
        raise ValueError(
            f"{_show(value)} is not one account id (letters and digits, e.g. U1234567)"
        )


def _http_url(value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(f"{_show(value)} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{_show(value)} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{_show(value)} has no host")


def _existing_file(value: Any) -> None:
    if not isinstance(value, Path):
        raise ValueError(f"{_show(value)} is not a path")
    try:
        exists, is_file = value.exists(), value.is_file()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, no permission
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{_show(value)} cannot be checked ({reason})") from None
    if not exists:
        raise ValueError(f"{_show(value)} does not exist")
    if not is_file:
        raise ValueError(f"{_show(value)} is not a file")


def _path(value: Any) -> None:
    if not isinstance(value, Path) or str(value) in ("", "."):
        raise ValueError(f"{_show(value)} is not a file path")


def _window(value: Any) -> None:
    if not all(isinstance(part, time) for part in value):
        raise ValueError(f"{_show(value)} is not a pair of times of day")


def _time_of_day(value: Any) -> None:
    if not isinstance(value, time) or value.tzinfo is not None:
        raise ValueError(f"{_show(value)} is not a local time of day")


def _weekly(value: Any) -> None:
    if value is not None and not isinstance(value, WeeklyWindow):
        raise ValueError(f"{_show(value)} is not a weekly window")


def _zone(value: Any) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):  # OSError: name too long
        raise ValueError(
            f"{_show(value)} is not a known time zone (an IANA name such as America/New_York)"
        ) from None


def _delays(value: Any) -> None:
    if not isinstance(value, tuple) or not value:
        raise ValueError(f"{_show(value)} is not a list of seconds")
    if len(value) > _MAX_DELAYS:
        raise ValueError(f"has {len(value)} delays (at most {_MAX_DELAYS})")
    shown = [f"{v:g}" if _is_number(v) else repr(v) for v in value]
    for delay, text in zip(value, shown, strict=True):
        if not (_is_number(delay) and math.isfinite(delay) and delay > 0):
            raise ValueError(f"{text} in {','.join(shown)!r} must be a number > 0")


def _one_of(kind: type[enum.Enum]) -> Check:
    def check(value: Any) -> None:
        if not isinstance(value, kind):
            allowed = ", ".join(str(member.value) for member in kind)
            raise ValueError(f"{_show(value)} is not one of {allowed}")

    return check


def _log_level(value: Any) -> None:
    if value not in LOG_LEVELS:
        raise ValueError(f"{_show(value)} is not one of {', '.join(LOG_LEVELS)}")


def _text(value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not text")


# --- bounds and text limits (declared per setting, as data on its SettingKey) ----------

_MAX_DELAYS: Final = 20
_PREVIEW_CHARS: Final = 40
#: Unicode categories refused anywhere in a value: C0/C1 controls and DEL (Cc), and the
#: line and paragraph separators, which split a log line or a libpq keyword string.
_CONTROL_CATEGORIES: Final = frozenset({"Cc", "Zl", "Zp"})


def _is_byte_unit(unit: str) -> bool:
    return unit == "bytes"


def _format_bound(number: float, unit: str) -> str:
    if _is_byte_unit(unit):
        for suffix, scale in reversed(_SIZE_UNITS.items()):
            if scale > 1 and number >= scale and number % scale == 0:
                return f"{int(number // scale)}{suffix.upper()}"
        return str(int(number))
    if isinstance(number, int):
        return str(number)
    return f"{number:g}"


@frozen
class Bounds:
    """The documented sane range of a numeric setting, both ends inclusive.

    For a list setting (``BRIDGE_BACKOFF``) it applies to each element. Declared on the
    setting's :class:`SettingKey`, checked on load and on every built or evolved record,
    and shown in the Range column of docs/configuration.md.
    """

    low: int | float
    high: int | float
    unit: str = ""

    def __attrs_post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(f"bad bounds {self.low!r}..{self.high!r}")

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        text = f"{_format_bound(self.low, self.unit)}..{_format_bound(self.high, self.unit)}"
        return text + unit

    def check(self, value: Any) -> None:
        for item in value if isinstance(value, tuple) else (value,):
            # Types are the check's business; None is an optional setting left empty.
            if _is_number(item) and not (self.low <= item <= self.high):
                shown = str(item) if isinstance(item, int) else f"{item:g}"
                if len(shown) > SHOWN_CHARS:  # a 250-digit integer is a typo, not a value
                    shown = f"{shown[: SHOWN_CHARS - 3]}... ({len(shown)} digits)"
                raise ValueError(f"{shown} is out of range ({self.describe()})")


def _control_character(text: str) -> str | None:
    for index, char in enumerate(text):
        if unicodedata.category(char) in _CONTROL_CATEGORIES:
            return f"U+{ord(char):04X} at position {index + 1}"
    return None


def _check_text(key: SettingKey, text: str) -> None:
    """Refuse a text (raw or typed) longer than ``key.max_length`` or holding a control."""
    if len(text) > key.max_length:
        shown = "" if key.secret else f", starting {_show(text[:_PREVIEW_CHARS])}"
        raise ValueError(f"is {len(text)} characters long (at most {key.max_length}){shown}")
    found = _control_character(text)
    if found is not None:
        shown = "" if key.secret else f" in {_show(text)}"
        raise ValueError(f"contains a control character ({found}){shown}; none is allowed")


def _validate(key: SettingKey, value: Any) -> None:
    """Every rule on a typed value: its text limits, the key's check, its bounds."""
    if isinstance(value, str | Path):
        _check_text(key, str(value))  # first: the check may hand the text to the OS
    key.check(value)
    if key.bounds is not None:
        key.bounds.check(value)


_PORTS: Final = Bounds(1, 65535)
