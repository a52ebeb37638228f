"""Typed, validated settings read from the environment and an optional ``.env`` file.

Every setting is declared once, as an attrs field carrying a :class:`SettingKey` (variable
name, type description, default as written in ``.env``, one-line meaning, and its limits:
``bounds`` for a number, ``max_length`` for the raw text). From those declarations come the
loader, ``docs/configuration.md`` and ``.env.example``, so the three cannot drift apart (a
test compares the committed files with freshly generated ones).

Limits are data on the declaration: ``_setting(..., bounds=Bounds(0.1, 3600, "s"))`` for
a number (a test fails for any numeric setting without bounds), ``max_length=N`` for text
(default DEFAULT_MAX_LENGTH). Every value's raw text is refused when it is longer than its
``max_length`` or holds a control character, before any parsing; values quoted in errors
are cut to SHOWN_CHARS; a check that raises ``OSError`` (a 10 KB path or zone name) is a
problem like any other, listed with the rest in one ConfigError.

Strings are turned into typed values by a cattrs converter with strict hooks: cattrs'
stock ``bool`` hook would read ``"false"`` as True, and its tuple hook would split a string
into characters. Range and cross-field rules run after structuring and again whenever a
record is built or evolved, so ``Settings.with_overrides`` cannot produce an invalid record.

Public API:

``load_settings(environ=None, dotenv_path=".env", *, use_dotenv=True) -> Settings``
    Reads ``dotenv_path`` (if it exists and ``use_dotenv``) with python-dotenv, never
    touching ``os.environ``; ``environ`` (``os.environ`` when None) overrides it. An empty
    value means the default. Raises :class:`ConfigError` listing every problem at once.
``Settings``
    Frozen attrs record of every setting (plain attributes, see the field list); plus
    ``database: DatabaseConfig``, ``unknown_keys`` (IB_/IBKR_/BRIDGE_ variables that are not
    settings, likely typos), ``with_overrides(**kw)`` and ``watchdog_kwargs()``.
``DatabaseConfig``
    ``DATABASE_URL`` or the libpq ``PG*`` variables; ``repr``/``str``/``redacted()`` never
    show a password; ``dsn`` and ``connect_kwargs()`` are for the one place that connects.
``ApiMode``, ``LogFormat``, ``MissingLegs``
    String enums for ``IB_API_MODE``, ``BRIDGE_LOG_FORMAT`` and ``BRIDGE_MISSING_LEGS``.
``ConfigError(BridgeError, ValueError)``
    ``.problems`` is a tuple of ``"VARIABLE: what is wrong"`` lines.
``SettingKey``, ``setting_keys()``, ``Bounds``
    The declarations, for tooling; ``key.range_text()`` is the documented range.
    ``OUR_PREFIXES``, ``FOREIGN_KEYS`` (our-prefixed
    variables read elsewhere, e.g. by the test suite) and ``LOG_LEVELS`` are constants.
``redact_dsn(text) -> str``
    ``postgresql://user:secret@host/db`` becomes ``postgresql://user:***@host/db``.
``render_configuration_doc() -> str``, ``render_env_example() -> str``, ``main(argv)``
    ``python -m ibkr_bridge.config`` rewrites ``docs/configuration.md`` and ``.env.example``;
    ``--check`` only reports whether they are stale (exit status 1).
"""

# _setting() returns an attrs field, not a shared mutable default, which RUF009 cannot see.
# ruff: noqa: RUF009

from __future__ import annotations

import argparse
import enum
import math
import os
import re
import sys
import types
import typing
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import time
from pathlib import Path
from typing import Any, Final, NewType
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import cattrs
from attrs import field, frozen
from dotenv import dotenv_values

from ibkr_bridge.core.errors import BridgeError
from ibkr_bridge.core.resetwindow import MAX_WEEKLY_HOURS, NORTH_AMERICA_WEEKLY, WeeklyWindow

__all__ = [
    "FOREIGN_KEYS",
    "LOG_LEVELS",
    "OUR_PREFIXES",
    "ApiMode",
    "Bounds",
    "ConfigError",
    "DatabaseConfig",
    "LogFormat",
    "MissingLegs",
    "SettingKey",
    "Settings",
    "load_settings",
    "main",
    "redact_dsn",
    "render_configuration_doc",
    "render_env_example",
    "setting_keys",
]

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
#: No problem line of a ConfigError is longer than this.
PROBLEM_CHARS: Final = 400
#: Longest raw text accepted for a setting that does not declare its own ``max_length``.
DEFAULT_MAX_LENGTH: Final = 256


def _bounded(problem: str) -> str:
    if len(problem) <= PROBLEM_CHARS:
        return problem
    return problem[: PROBLEM_CHARS - 3] + "..."


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


class ConfigError(BridgeError, ValueError):
    """The settings are invalid; ``problems`` holds one ``"VARIABLE: reason"`` per problem."""

    def __init__(self, problems: Iterable[str]) -> None:
        # A last guard: a problem line never grows past PROBLEM_CHARS, whatever it quotes.
        self.problems: tuple[str, ...] = tuple(_bounded(problem) for problem in problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        header = f"invalid configuration ({count} problem{'' if count == 1 else 's'}):"
        return "\n".join([header, *(f"  {problem}" for problem in self.problems)])


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


LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# --- redaction -------------------------------------------------------------------------

_PASSWORD_PARAM = re.compile(r"(?i)(password\s*=\s*)('[^']*'|[^&\s#]*)")


def redact_dsn(text: str) -> str:
    """``text`` with any password replaced by ``***`` (URL userinfo and ``password=``).

    It errs towards hiding too much: the userinfo is everything before the *last* ``@``,
    because passwords written by hand often contain an unescaped ``@`` or ``/``.
    """
    scheme_end = text.find("://")
    start = 0 if scheme_end < 0 else scheme_end + 3
    at = text.rfind("@")
    if at > start:
        userinfo = text[start:at]
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            text = f"{text[:start]}{user}:{_REDACTED}{text[at:]}"
    return _PASSWORD_PARAM.sub(rf"\g<1>{_REDACTED}", text)


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
    for kind in (ApiMode, LogFormat, MissingLegs):
        converter.register_structure_hook(kind, _structure_enum)
    converter.register_structure_hook_factory(_is_optional, _optional_hook)
    return converter


_converter: Final = _make_converter()


# --- rules on typed values (also run when a record is built or evolved) ----------------

Check = Callable[[Any], None]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive(value: Any) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{_show(value)} must be a finite number > 0")


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


def _dsn(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError("is not a string")
    shown = redact_dsn(value)  # the password never reaches an error message
    try:
        scheme = urlsplit(value).scheme
    except ValueError:
        raise ValueError(f"{_show(shown)} is not a valid URL") from None
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"{_show(shown)} is not a postgres:// or postgresql:// URL")
    if any(c.isspace() for c in value):
        raise ValueError(f"{_show(shown)} contains blanks")
    # What asyncpg would refuse only when it first connects, long after startup: found
    # here it is a ConfigError listed with every other problem, not an endless outage.
    problems = _dsn_problems(value)
    if problems:
        raise ValueError(f"{_show(shown)}: {'; '.join(problems)}")


_SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TARGET_SESSION_ATTRS: Final = (
    "any",
    "primary",
    "standby",
    "prefer-standby",
    "read-write",
    "read-only",
)
_DSN_CHOICES: Final = {
    "sslmode": _SSLMODES,
    "target_session_attrs": _TARGET_SESSION_ATTRS,
    "gsslib": ("gssapi", "sspi"),
}
_IPV6_HOSTSPEC = re.compile(r"\[[^\]]+\](?::(.*))?")


def _dsn_port_problem(port: str, where: str) -> str | None:
    if _INT.fullmatch(port) and 1 <= int(port) <= 65535:
        return None
    return f"port {port!r} {where}is not a number 1..65535"


def _dsn_problems(value: str) -> list[str]:
    """What a URL of the right scheme still gets wrong, parsed the way asyncpg parses it.

    Messages never quote the userinfo: only ports, parameter names and their values.
    """
    parts = urlsplit(value)
    netloc_end = value.find("://") + 3 + len(parts.netloc)
    if value.rfind("@") >= netloc_end or parts.netloc.count("@") > 1:
        # An unescaped "/", "?", "#" or "@" in the password moves the split points: what
        # would be read as port, host or parameters is then partly the password. Say only
        # that, quoting nothing.
        return ["the user or password contains '/', '?', '#' or '@': percent-encode it"]
    problems: list[str] = []
    hostlist = parts.netloc.rpartition("@")[2]
    if hostlist:
        for hostspec in hostlist.split(","):
            if hostspec.startswith("["):
                match = _IPV6_HOSTSPEC.fullmatch(hostspec)
                port = match.group(1) if match else None
                if match is None:
                    problems.append(f"{hostspec!r} is not a valid [IPv6]:port host")
            else:
                port = hostspec.partition(":")[2] if ":" in hostspec else None
            if port:  # "host:" with an empty port means the default port
                problem = _dsn_port_problem(port, "")
                if problem:
                    problems.append(problem)
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        return [*problems, "the query string is not name=value pairs joined by &"]
    for name, values in query.items():
        given = values[-1]  # asyncpg uses the last one
        if name == "port":
            for port in given.split(","):
                problem = _dsn_port_problem(port, "(the port parameter) ")
                if problem:
                    problems.append(problem)
        elif name in _DSN_CHOICES and given not in _DSN_CHOICES[name]:
            allowed = ", ".join(_DSN_CHOICES[name])
            problems.append(f"{name}={given!r} is not one of {allowed}")
    return problems


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


# --- declarations ----------------------------------------------------------------------


@frozen
class SettingKey:
    """One environment variable: how it is documented and how its text is read."""

    env: str
    kind: str
    default: str
    meaning: str
    parse_as: Any = field(repr=False)
    check: Check = field(repr=False)
    secret: bool = False
    strip: bool = True
    #: Sane range of a numeric setting (required for every number: see the tests).
    bounds: Bounds | None = None
    #: Longest raw text accepted, before any parsing.
    max_length: int = DEFAULT_MAX_LENGTH
    #: The range in words, for a value whose limits are neither bounds nor a length.
    range_note: str = ""

    def range_text(self) -> str:
        """The Range cell of docs/configuration.md."""
        if self.range_note:
            return self.range_note
        if self.bounds is not None:
            each = "each " if self.parse_as == _Seconds else ""
            count = f"; 1 to {_MAX_DELAYS} values" if self.parse_as == _Seconds else ""
            return f"{each}{self.bounds.describe()}{count}"
        return f"up to {self.max_length} characters"


def _field(key: SettingKey, part: int | None = None) -> Any:
    """An attrs field declared by ``key``; its typed default is its parsed text default.

    ``part`` picks one element of a variable that sets several fields (the reset window).
    The default is parsed at construction, not import, so ``~`` follows the current HOME.
    """
    _converter.structure(key.default, key.parse_as)  # a bad default fails at import

    def default() -> Any:
        typed = _converter.structure(key.default, key.parse_as)
        return typed if part is None else typed[part]

    return field(factory=default, metadata={_METADATA: (key, part)})


def _setting(
    env: str,
    kind: str,
    default: str,
    meaning: str,
    parse_as: Any,
    check: Check,
    *,
    secret: bool = False,
    strip: bool = True,
    bounds: Bounds | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    range_note: str = "",
) -> Any:
    key = SettingKey(
        env, kind, default, meaning, parse_as, check, secret, strip, bounds, max_length, range_note
    )
    return _field(key)


_RESET_WINDOW = SettingKey(
    "BRIDGE_RESET_WINDOW",
    "HH:MM-HH:MM",
    "23:40-23:59",
    "IBKR nightly reset window, local time in BRIDGE_RESET_TZ, both ends inclusive (an end "
    "written HH:MM covers its whole minute); it may wrap past midnight",
    _Window,
    _window,
    max_length=32,
)


def _fields_with_keys(cls: type) -> Iterator[tuple[str, SettingKey, int | None]]:
    for attribute in attrs.fields(cls):
        declared = attribute.metadata.get(_METADATA)
        if declared is not None:
            key, part = declared
            yield attribute.name, key, part


def _keys_of(cls: type) -> list[SettingKey]:
    seen: dict[str, SettingKey] = {}
    for _, key, _part in _fields_with_keys(cls):
        seen.setdefault(key.env, key)
    return list(seen.values())


def _typed_values(obj: Any) -> Iterator[tuple[SettingKey, Any]]:
    """Each key of a record with its typed value (a tuple for a key spread over fields)."""
    parts: dict[str, tuple[SettingKey, dict[int, Any]]] = {}
    for name, key, part in _fields_with_keys(type(obj)):
        if part is None:
            yield key, getattr(obj, name)
        else:
            parts.setdefault(key.env, (key, {}))[1][part] = getattr(obj, name)
    for key, values in parts.values():
        yield key, tuple(values[i] for i in sorted(values))


def _record_problems(obj: Any) -> list[str]:
    problems: list[str] = []
    for key, value in _typed_values(obj):
        try:
            _validate(key, value)
        except (ValueError, OSError) as exc:
            problems.append(f"{key.env}: {exc}")
    return problems


@frozen(kw_only=True, repr=False)
class DatabaseConfig:
    """Where the database is: ``DATABASE_URL``, else the libpq ``PG*`` variables.

    Neither ``repr`` nor ``str`` shows a password; use :meth:`redacted` in logs and
    :attr:`dsn` / :meth:`connect_kwargs` only where the connection is made.
    """

    dsn: str | None = _setting(
        "DATABASE_URL",
        "postgres:// or postgresql:// URL",
        "",
        "PostgreSQL connection URL; empty = the PG* variables below",
        str | None,
        _dsn,
        secret=True,
        max_length=4096,
    )
    host: str | None = _setting(
        "PGHOST",
        "host",
        "",
        "Database host when DATABASE_URL is empty",
        str | None,
        _text,
        max_length=1024,
    )
    port: int | None = _setting(
        "PGPORT",
        "port",
        "",
        "Database port when DATABASE_URL is empty",
        int | None,
        _optional(_integer),
        bounds=_PORTS,
    )
    user: str | None = _setting(
        "PGUSER",
        "text",
        "",
        "Database user when DATABASE_URL is empty",
        str | None,
        _text,
        max_length=63,
    )
    password: str | None = _setting(
        "PGPASSWORD",
        "text",
        "",
        "Database password when DATABASE_URL is empty (never logged; taken verbatim)",
        str | None,
        _text,
        secret=True,
        strip=False,
        max_length=1024,
    )
    database: str | None = _setting(
        "PGDATABASE",
        "text",
        "",
        "Database name when DATABASE_URL is empty",
        str | None,
        _text,
        max_length=63,
    )

    def __attrs_post_init__(self) -> None:
        problems = _record_problems(self)
        if problems:
            raise ConfigError(problems)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect`` / ``create_pool`` (or ``Store.open``).

        The ``PG*`` values are passed explicitly because they may come from ``.env``, which
        asyncpg does not read; unset ones are left to asyncpg's own defaults.
        """
        if self.dsn is not None:
            return {"dsn": self.dsn}
        pairs = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
        }
        return {name: value for name, value in pairs.items() if value is not None}

    def redacted(self) -> str:
        """A description for logs, with the password replaced by ``***``."""
        if self.dsn is not None:
            return redact_dsn(self.dsn)
        shown: dict[str, Any] = dict(self.connect_kwargs())
        if "password" in shown:
            shown["password"] = _REDACTED
        if not shown:
            return "libpq defaults (PG* variables of the process)"
        return "PG* variables: " + ", ".join(f"{name}={value}" for name, value in shown.items())

    def __repr__(self) -> str:
        dsn = None if self.dsn is None else redact_dsn(self.dsn)
        password = None if self.password is None else _REDACTED
        return (
            f"DatabaseConfig(dsn={dsn!r}, host={self.host!r}, port={self.port!r}, "
            f"user={self.user!r}, password={password!r}, database={self.database!r})"
        )

    def __str__(self) -> str:
        return self.redacted()


def _resume_outside_window(values: Mapping[str, Any]) -> str | None:
    start, end = values["reset_window_start"], values["reset_window_end"]
    resume = values["resume_at"]
    inside = start <= resume <= end if start <= end else resume >= start or resume <= end
    if inside:
        return (
            f"BRIDGE_RESET_RESUME: {resume:%H:%M} lies inside BRIDGE_RESET_WINDOW "
            f"{start:%H:%M:%S}-{end:%H:%M:%S}; reconnecting there would fail and wait a day"
        )
    return None


def _probe_timeout_below_interval(values: Mapping[str, Any]) -> str | None:
    if values["probe_timeout"] >= values["probe_interval"]:
        return (
            f"IB_PROBE_TIMEOUT: {values['probe_timeout']:g} s must be less than "
            f"IB_PROBE_INTERVAL ({values['probe_interval']:g} s)"
        )
    return None


def _ca_needs_verification(values: Mapping[str, Any]) -> str | None:
    if values["gateway_ca"] is not None and not values["verify_tls"]:
        return (
            "IBKR_GATEWAY_CA: is set but IBKR_VERIFY_TLS is false, so it would be ignored; "
            "unset one of them"
        )
    return None


# Rules across fields: (fields involved, rule). A rule runs only when all its fields parsed.
_CROSS_RULES: Final[Sequence[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], str | None]]]] = (
    (("probe_timeout", "probe_interval"), _probe_timeout_below_interval),
    (("gateway_ca", "verify_tls"), _ca_needs_verification),
    (("reset_window_start", "reset_window_end", "resume_at"), _resume_outside_window),
)


def _cross_problems(values: Mapping[str, Any]) -> list[str]:
    problems = []
    for names, rule in _CROSS_RULES:
        if all(name in values for name in names):
            problem = rule(values)
            if problem is not None:
                problems.append(problem)
    return problems


_SECONDS = "seconds"


@frozen(kw_only=True)
class Settings:
    """Every setting of the bridge, typed and validated (see docs/configuration.md)."""

    # IB_*: the TWS API socket side (IB_ACCOUNT serves both modes).
    api_mode: ApiMode = _setting(
        "IB_API_MODE",
        "SOCKET or PORTAL",
        "SOCKET",
        "IBKR API to use: SOCKET (TWS API to IB Gateway) or PORTAL (Client Portal REST); "
        "case-insensitive",
        ApiMode,
        _one_of(ApiMode),
        max_length=16,
    )
    socket_host: str = _setting(
        "IB_SOCKET_HOST",
        "host",
        "127.0.0.1",
        "IB Gateway host (SOCKET mode)",
        str,
        _host,
        max_length=253,
    )
    socket_port: int = _setting(
        "IB_SOCKET_PORT",
        "port",
        "4001",
        "IB Gateway API port (SOCKET mode)",
        int,
        _integer,
        bounds=_PORTS,
    )
    client_id: int = _setting(
        "IB_CLIENT_ID",
        "integer",
        "10",
        "TWS API client id of the bridge; 0 is refused (the trader's own IBKR app uses it)",
        int,
        _client_id,
        bounds=Bounds(1, 2**31 - 1),
    )
    account: str | None = _setting(
        "IB_ACCOUNT",
        "account id or empty",
        "",
        "Account to report, in both SOCKET and PORTAL mode; empty = the only managed account",
        str | None,
        _optional(_account),
        max_length=32,
    )
    connect_timeout: float = _setting(
        "IB_CONNECT_TIMEOUT",
        _SECONDS,
        "10",
        "Seconds allowed to connect to the Gateway and finish the handshake",
        float,
        _positive,
        bounds=Bounds(1, 600, "s"),
    )
    probe_interval: float = _setting(
        "IB_PROBE_INTERVAL",
        _SECONDS,
        "15",
        "Seconds between probes that detect a frozen Gateway (connected but not answering)",
        float,
        _positive,
        bounds=Bounds(1, 3600, "s"),
    )
    probe_timeout: float = _setting(
        "IB_PROBE_TIMEOUT",
        _SECONDS,
        "5",
        "Seconds a probe may wait for its answer; must be less than IB_PROBE_INTERVAL",
        float,
        _positive,
        bounds=Bounds(0.1, 600, "s"),
    )
    market_data_type: int = _setting(
        "IB_MARKET_DATA_TYPE",
        "integer",
        "1",
        "Market data requested: 1 live, 2 frozen, 3 delayed, 4 delayed frozen",
        int,
        _integer,
        bounds=Bounds(1, 4),
    )

    # IBKR_*: the Client Portal side.
    gateway_url: str = _setting(
        "IBKR_GATEWAY_URL",
        "http(s) URL",
        "https://localhost:5001",
        "Client Portal Gateway base URL (PORTAL mode)",
        str,
        _http_url,
        max_length=2048,
    )
    gateway_ca: Path | None = _setting(
        "IBKR_GATEWAY_CA",
        "file path or empty",
        "",
        "CA or certificate file to trust for the Client Portal Gateway; empty = system trust",
        Path | None,
        _optional(_existing_file),
        max_length=4096,
    )
    verify_tls: bool = _setting(
        "IBKR_VERIFY_TLS",
        "boolean",
        "true",
        "Verify the Client Portal Gateway's TLS certificate; false must be set explicitly",
        bool,
        _boolean,
        max_length=16,
    )
    tickle_interval: float = _setting(
        "IBKR_TICKLE_INTERVAL",
        _SECONDS,
        "60",
        "Seconds between /tickle calls that keep the Client Portal session alive",
        float,
        _positive,
        bounds=Bounds(1, 300, "s"),
    )

    # BRIDGE_*: the bridge's own behaviour.
    poll_interval: float = _setting(
        "BRIDGE_POLL_INTERVAL",
        _SECONDS,
        "5",
        "Seconds between Greeks rows written to the database",
        float,
        _positive,
        bounds=Bounds(0.1, 3600, "s"),
    )
    buffer_path: Path = _setting(
        "BRIDGE_BUFFER_PATH",
        "path (~ expanded)",
        "~/.portfolio_bridge_buffer.jsonl",
        "Crash-safe JSONL buffer holding rows while the database is unreachable",
        Path,
        _path,
        max_length=4096,
    )
    buffer_max_bytes: int = _setting(
        "BRIDGE_BUFFER_MAX_BYTES",
        "bytes; K/M/G/T suffix (x1024)",
        "1G",
        "Size cap of the buffer file; when full, new rows are refused, none deleted",
        _ByteSize,
        _integer,
        bounds=Bounds(4 << 10, 1 << 40, "bytes"),
    )
    memory_queue_size: int = _setting(
        "BRIDGE_MEMORY_QUEUE_SIZE",
        "integer 0..1000000",
        "10000",
        "Records held in memory while neither the database nor the buffer can take them "
        "(disk full, I/O error, size cap); beyond that they are refused, logged in full; "
        "0 turns the memory queue off",
        int,
        _int_range(0, 1_000_000),
        bounds=Bounds(0, 1_000_000, "records"),
    )
    retry_interval: float = _setting(
        "BRIDGE_RETRY_INTERVAL",
        _SECONDS,
        "60",
        "Seconds between database retries while it is unreachable",
        float,
        _positive,
        bounds=Bounds(0.1, 3600, "s"),
    )
    db_connect_timeout: float = _setting(
        "BRIDGE_DB_CONNECT_TIMEOUT",
        _SECONDS,
        "5",
        "Seconds allowed to connect to the database",
        float,
        _positive,
        bounds=Bounds(0.1, 300, "s"),
    )
    db_command_timeout: float = _setting(
        "BRIDGE_DB_COMMAND_TIMEOUT",
        _SECONDS,
        "10",
        "Seconds allowed for one database command",
        float,
        _positive,
        bounds=Bounds(0.1, 3600, "s"),
    )
    batch_size: int = _setting(
        "BRIDGE_BATCH_SIZE",
        "integer",
        "5000",
        "Rows written per transaction when draining the buffer",
        int,
        _integer,
        bounds=Bounds(1, 100_000),
    )
    reset_window_start: time = _field(_RESET_WINDOW, part=0)
    reset_window_end: time = _field(_RESET_WINDOW, part=1)
    resume_at: time = _setting(
        "BRIDGE_RESET_RESUME",
        "HH:MM",
        "00:05",
        "Local time to reconnect after a disconnect inside the reset window (must be outside it)",
        time,
        _time_of_day,
        max_length=16,
    )
    reset_tz: str = _setting(
        "BRIDGE_RESET_TZ",
        "IANA time zone",
        "America/New_York",
        "Time zone of BRIDGE_RESET_WINDOW, BRIDGE_RESET_RESUME and BRIDGE_WEEKLY_WINDOW",
        str,
        _zone,
        max_length=64,
    )
    weekly_window: WeeklyWindow | None = _setting(
        "BRIDGE_WEEKLY_WINDOW",
        "Ddd HH:MM-Ddd HH:MM, or off",
        str(NORTH_AMERICA_WEEKLY),
        "IBKR weekly maintenance window, local time in BRIDGE_RESET_TZ, from its start "
        "(inclusive) to its end (the reconnect time), at most 48 h; a disconnect inside it "
        "waits until its end. The default is IBKR's North America weekend maintenance "
        "(status page: Friday 23:00 to Saturday 03:00 New York time); check IBKR's status "
        "page for your region's server; off = none",
        WeeklyWindow,
        _weekly,
        max_length=64,
        range_note=f"longer than 0, at most {MAX_WEEKLY_HOURS} h",
    )
    backoff: tuple[float, ...] = _setting(
        "BRIDGE_BACKOFF",
        "comma-separated seconds",
        "5,10,20",
        "Waits before the reconnection attempts after an unexpected disconnect",
        _Seconds,
        _delays,
        bounds=Bounds(0.1, 3600, "s"),
    )
    steady_retry: float = _setting(
        "BRIDGE_STEADY_RETRY",
        _SECONDS,
        "60",
        "Seconds between reconnection attempts once BRIDGE_BACKOFF is used up (never gives up)",
        float,
        _positive,
        bounds=Bounds(0.1, 3600, "s"),
    )
    http_port: int | None = _setting(
        "BRIDGE_HTTP_PORT",
        "port or empty",
        "",
        "Port of the bridge's local HTTP status endpoint; empty = no endpoint",
        int | None,
        _optional(_integer),
        bounds=_PORTS,
    )
    http_host: str = _setting(
        "BRIDGE_HTTP_HOST",
        "host",
        "127.0.0.1",
        "Address the HTTP status endpoint listens on",
        str,
        _host,
        max_length=253,
    )
    log_format: LogFormat = _setting(
        "BRIDGE_LOG_FORMAT",
        "text or json",
        "text",
        "Log line format",
        LogFormat,
        _one_of(LogFormat),
        max_length=16,
    )
    log_level: str = _setting(
        "BRIDGE_LOG_LEVEL",
        "DEBUG/INFO/WARNING/ERROR/CRITICAL",
        "INFO",
        "Lowest level logged (case-insensitive)",
        _Upper,
        _log_level,
        max_length=16,
    )
    # How current option Greeks must be (docs/greeks.md, "Staleness and missing legs").
    stale_after: float | None = _setting(
        "BRIDGE_STALE_AFTER",
        "seconds > 0 or empty",
        "",
        "An option leg's Greeks older than this are stale, never used in a row; empty = three "
        "update periods (SOCKET 3 x BRIDGE_POLL_INTERVAL, PORTAL 3 polls = 6 s)",
        float | None,
        _optional(_positive),
        bounds=Bounds(0.1, 86400, "s"),
    )
    leg_grace: float = _setting(
        "BRIDGE_LEG_GRACE",
        _SECONDS,
        "30",
        "Seconds an option leg may wait for its first Greeks before it is reported missing",
        float,
        _positive,
        bounds=Bounds(0.1, 3600, "s"),
    )
    missing_legs: MissingLegs = _setting(
        "BRIDGE_MISSING_LEGS",
        "skip or partial",
        "skip",
        "With an option leg missing or stale: skip writes no row; partial writes the other "
        "legs' net with legs_missing counted",
        MissingLegs,
        _one_of(MissingLegs),
    )

    # DATABASE_URL and PG*: the database.
    database: DatabaseConfig = field(factory=DatabaseConfig)

    #: Variables with our prefixes that are not settings (probably typos), sorted.
    unknown_keys: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        problems = _record_problems(self)
        if not problems:
            problems = _cross_problems(attrs.asdict(self, recurse=False))
        if problems:
            raise ConfigError(problems)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some attributes replaced (validated like a loaded record)."""
        return attrs.evolve(self, **changes)

    def watchdog_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``resetwindow.WatchdogPolicy``, from these settings."""
        return {
            "backoff": self.backoff,
            "steady_interval": self.steady_retry,
            "reset_window_start": self.reset_window_start,
            "reset_window_end": self.reset_window_end,
            "resume_at": self.resume_at,
            "tz": self.reset_tz,
            "weekly_window": self.weekly_window,
        }


def setting_keys() -> tuple[SettingKey, ...]:
    """Every variable read, in documentation order."""
    return (*_keys_of(Settings), *_keys_of(DatabaseConfig))


# --- loading ---------------------------------------------------------------------------


def _read_dotenv(path: str | os.PathLike[str] | None, problems: list[str]) -> dict[str, str]:
    if path is None or not os.path.isfile(path):
        return {}
    try:
        # interpolate=False: values are literal, so a password containing "${" survives.
        values = dotenv_values(path, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{os.fspath(path)}: cannot be read ({exc})")
        return {}
    # A bare "KEY" line has no value: it sets nothing.
    return {name: value for name, value in values.items() if value is not None}


def _parse_keys(cls: type, env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in _keys_of(cls):
        raw = env.get(key.env, "")
        text = raw.strip() if key.strip else raw
        if not text.strip():
            text = key.default
        try:
            _check_text(key, text)  # before parsing: nothing parses a 10 KB or forged value
            value = _converter.structure(text, key.parse_as)
            _validate(key, value)
        except (ValueError, OSError) as exc:  # OSError: a path or zone check on odd input
            message = str(exc)
            if key.secret and text in message:  # a second guard; hooks already redact
                message = message.replace(text, redact_dsn(text))
            problems.append(f"{key.env}: {message}")
            continue
        values[key.env] = value
    kwargs: dict[str, Any] = {}
    for name, key, part in _fields_with_keys(cls):
        if key.env in values:
            kwargs[name] = values[key.env] if part is None else values[key.env][part]
    return kwargs


def _unknown_keys(env: Iterable[str]) -> tuple[str, ...]:
    known = {key.env for key in setting_keys()} | set(FOREIGN_KEYS)
    # Case-insensitive prefix: "bridge_poll_interval" in a .env file is a typo too.
    return tuple(
        sorted(name for name in env if name.upper().startswith(OUR_PREFIXES) and name not in known)
    )


def load_settings(
    environ: Mapping[str, str] | None = None,
    dotenv_path: str | os.PathLike[str] | None = ".env",
    *,
    use_dotenv: bool = True,
) -> Settings:
    """Settings from ``.env`` (when it exists) overridden by ``environ`` (``os.environ``).

    ``dotenv_path=None`` or ``use_dotenv=False`` reads no file. ``os.environ`` is never
    changed. Raises :class:`ConfigError` naming every bad variable at once.
    """
    problems: list[str] = []
    env = _read_dotenv(dotenv_path, problems) if use_dotenv else {}
    env.update(os.environ if environ is None else environ)
    database_kwargs = _parse_keys(DatabaseConfig, env, problems)
    settings_kwargs = _parse_keys(Settings, env, problems)
    problems.extend(_cross_problems(settings_kwargs))
    if problems:
        raise ConfigError(problems)
    return Settings(
        **settings_kwargs,
        database=DatabaseConfig(**database_kwargs),
        unknown_keys=_unknown_keys(env),
    )


# --- generated documentation -----------------------------------------------------------

_GENERATED_BY: Final = "python -m ibkr_bridge.config"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_configuration_doc() -> str:
    """The text of ``docs/configuration.md``: every variable, its type, default, meaning."""
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated by `{_GENERATED_BY}` from ibkr_bridge/config/; do not edit. -->",
        "",
        "ibkr-bridge reads its settings from environment variables and from a `.env` file in",
        "the working directory; a variable set in the environment wins over the same one in",
        "`.env`. The file's values are taken literally (no `${VAR}` expansion). An empty value",
        "means the default. Every problem is reported at once at startup, each line naming its",
        "variable. Variables starting with `IB_`, `IBKR_` or `BRIDGE_` that are not listed here",
        "are reported as probable typos (a warning, not an error).",
        "",
        "Booleans are `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off` (any case); anything",
        "else is an error. Seconds are decimal numbers; NaN and infinities are refused. Sizes",
        "take K, M, G or T suffixes counting in 1024s (`512M`, `1G`). `~` in a path is the",
        "home directory. `IB_ACCOUNT` chooses the account in both SOCKET and PORTAL mode.",
        "",
        "The database is `DATABASE_URL`, or when it is empty the standard libpq variables",
        "`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD` and `PGDATABASE`. Passwords are never",
        "logged or shown in errors: a URL appears as `postgresql://user:***@host/db`.",
        "",
        "Every setting has a sane range, shown in the Range column: a number outside it is",
        "refused (a poll interval of 1e-6 s or a timeout of 1e308 s is a typo, not a wish), and",
        "no value may be longer than the length given, or than "
        f"{DEFAULT_MAX_LENGTH} characters for a number.",
        "Control characters (newlines, tabs, NUL, DEL, the Unicode line separators) are refused",
        "inside any value; blanks around a value are ignored, except in `PGPASSWORD`. Errors",
        f"quote a value cut to {SHOWN_CHARS} characters, never a password.",
        "",
        "| Variable | Type | Default | Range | Meaning |",
        "|---|---|---|---|---|",
    ]
    for key in setting_keys():
        default = f"`{key.default}`" if key.default else "*(empty)*"
        lines.append(
            f"| `{key.env}` | {_cell(key.kind)} | {_cell(default)} | "
            f"{_cell(key.range_text())} | {_cell(key.meaning)} |"
        )
    lines += ["", "Read elsewhere, not settings of the service:", ""]
    lines += [f"- `{name}`: {meaning}" for name, meaning in FOREIGN_KEYS.items()]
    return "\n".join(lines) + "\n"


def render_env_example() -> str:
    """The text of ``.env.example``: every variable, commented out at its default."""
    lines = [
        f"# ibkr-bridge settings (generated by `{_GENERATED_BY}`; see docs/configuration.md).",
        "# Copy to .env and uncomment what you change; an empty value means the default.",
    ]
    group = ""
    for key in setting_keys():
        prefix = key.env.split("_", 1)[0] if not key.env.startswith("PG") else "DATABASE"
        if prefix != group:
            group = prefix
            lines.append("")
        lines.append(f"# {key.meaning} [{key.kind}]")
        lines.append(f"# {key.env}={key.default}")
    return "\n".join(lines) + "\n"


def _generated_files(root: Path) -> dict[Path, str]:
    return {
        root / "docs" / "configuration.md": render_configuration_doc(),
        root / ".env.example": render_env_example(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with ``--check`` compare) docs/configuration.md and .env.example."""
    parser = argparse.ArgumentParser(prog=_GENERATED_BY, description=main.__doc__)
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[2],
        help="project root holding docs/ (default: the source checkout)",
    )
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for path, text in _generated_files(args.root).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    verb = "stale" if args.check else "written"
    for path in stale:
        sys.stdout.write(f"{verb}: {path}\n")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
