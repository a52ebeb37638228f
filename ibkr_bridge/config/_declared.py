"""Settings declared as data: ``settings.toml`` read into the attrs fields of a record.

Each table of ``settings.toml`` declares one field of :class:`~ibkr_bridge.config.Settings`
(or, with ``fields = [...]``, one variable that sets several fields: the reset window). Its
``type`` and ``check`` name entries of the registries below, so the file holds no code; the
record class holds only the Python annotations. :func:`declared` puts the two together and
refuses, at import, a table without its annotation or an annotation without its table.
Each declared annotation is written ``name: type = DECLARED``: the marker is replaced by the
table's field, and it shows type checkers (mypy's attrs plugin reads the class body, not
the decorator) that the field has a default, without writing the default a second time.

:func:`default_of` is the typed default of a field: the one place other layers read a
default from (the database retry interval, the batch size, ...), never a copy of it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from datetime import time
from functools import cache
from pathlib import Path
from typing import Any, Final, TypeVar

from ibkr_bridge.config import _checks as checks
from ibkr_bridge.config._checks import Bounds, Check
from ibkr_bridge.config._keys import SettingKey, _field
from ibkr_bridge.config._values import (
    ApiMode,
    GreeksFallback,
    LogFormat,
    MissingLegs,
    _ByteSize,
    _converter,
    _Seconds,
    _Upper,
    _Window,
)
from ibkr_bridge.core.resetwindow import MAX_WEEKLY_HOURS, NORTH_AMERICA_WEEKLY, WeeklyWindow

DECLARATIONS: Final = Path(__file__).with_name("settings.toml")

_TYPES: Final[Mapping[str, Any]] = {
    "ApiMode": ApiMode,
    "ByteSize": _ByteSize,
    "GreeksFallback": GreeksFallback,
    "LogFormat": LogFormat,
    "MissingLegs": MissingLegs,
    "Path": Path,
    "Seconds": _Seconds,
    "Upper": _Upper,
    "WeeklyWindow": WeeklyWindow,
    "Window": _Window,
    "bool": bool,
    "float": float,
    "int": int,
    "str": str,
    "time": time,
}

_CHECKS: Final[Mapping[str, Check]] = {
    "account": checks._account,
    "boolean": checks._boolean,
    "client_id": checks._client_id,
    "delays": checks._delays,
    "existing_file": checks._existing_file,
    "finite": checks._finite,
    "host": checks._host,
    "http_url": checks._http_url,
    "integer": checks._integer,
    "log_level": checks._log_level,
    "path": checks._path,
    "positive": checks._positive,
    "time_of_day": checks._time_of_day,
    "weekly": checks._weekly,
    "window": checks._window,
    "zone": checks._zone,
}

# Values a table may name instead of writing them again (they live in the core).
_CONSTANTS: Final[Mapping[str, Any]] = {
    "MAX_WEEKLY_HOURS": MAX_WEEKLY_HOURS,
    "NORTH_AMERICA_WEEKLY": NORTH_AMERICA_WEEKLY,
}

T = TypeVar("T")


class _Declared:
    """The type of :data:`DECLARED`, a marker with a readable repr."""

    def __repr__(self) -> str:
        return f"<declared in {DECLARATIONS.name}>"


#: ``name: type = DECLARED``: this field's attrs field, default included, is its table's.
DECLARED: Final[Any] = _Declared()


def _check(table: Mapping[str, Any], parse_as: Any, bounds: Bounds | None) -> Check:
    name = table["check"]
    if name == "one_of":
        check = checks._one_of(parse_as)
    elif name == "int_range":
        if bounds is None:
            raise ValueError(f"{table['env']}: check int_range needs bounds")
        check = checks._int_range(int(bounds.low), int(bounds.high))
    else:
        check = _CHECKS[name]
    return checks._optional(check) if table.get("optional", False) else check


def _key(table: Mapping[str, Any]) -> SettingKey:
    parse_as = _TYPES[table["type"]]
    low_high = table.get("bounds")
    bounds = Bounds(low_high[0], low_high[1], table.get("unit", "")) if low_high else None
    named = table.get("default_from")
    default: str = str(_CONSTANTS[named]) if named is not None else table["default"]
    return SettingKey(
        table["env"],
        table["kind"],
        default,
        table["meaning"],
        parse_as | None if table.get("optional", False) else parse_as,
        _check(table, parse_as, bounds),
        secret=table.get("secret", False),
        strip=table.get("strip", True),
        bounds=bounds,
        max_length=table.get("max_length", SettingKey.__attrs_attrs__.max_length.default),
        range_note=table.get("range_note", "").format_map(_CONSTANTS),
    )


@cache
def _tables() -> dict[str, Any]:
    with DECLARATIONS.open("rb") as file:
        return tomllib.load(file)


def declared(cls: type[T]) -> type[T]:
    """Give each annotated field of ``cls`` the attrs field its table declares (before attrs)."""
    names = list(cls.__annotations__)
    covered: list[str] = []
    unmarked: list[str] = []
    for table_name, table in _tables().items():
        key = _key(table)
        fields = table.get("fields", [table_name])
        for part, name in enumerate(fields):
            if name not in names:
                raise TypeError(f"{DECLARATIONS.name} [{table_name}]: {cls.__name__}.{name}?")
            if cls.__dict__.get(name) is not DECLARED:
                unmarked.append(name)
            setattr(cls, name, _field(key, part if len(fields) > 1 else None))
            covered.append(name)
    # The declared fields come first in the class, in the file's order: the docs' order.
    if names[: len(covered)] != covered:
        raise TypeError(f"{cls.__name__}: fields {names[: len(covered)]} != declared {covered}")
    if unmarked:
        raise TypeError(f"{cls.__name__}: declared fields {unmarked} need `= DECLARED`")
    # A marker left over has no table: attrs would make the marker itself the default.
    stray = [name for name in names if cls.__dict__.get(name) is DECLARED]
    if stray:
        raise TypeError(f"{cls.__name__}: {stray} are `= DECLARED` without a table")
    return cls


def default_of(name: str) -> Any:
    """The typed default of a field of Settings (e.g. ``default_of("retry_interval")``)."""
    for table_name, table in _tables().items():
        fields = table.get("fields", [table_name])
        if name in fields:
            typed = _converter.structure(_key(table).default, _key(table).parse_as)
            return typed if len(fields) == 1 else typed[fields.index(name)]
    raise KeyError(name)


__all__ = ["DECLARATIONS", "DECLARED", "declared", "default_of"]
