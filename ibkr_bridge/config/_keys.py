"""Setting declarations: SettingKey and the attrs fields that carry one."""

# _setting() returns an attrs field, not a shared mutable default, which RUF009 cannot see.

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
from attrs import field, frozen

from ibkr_bridge.config._checks import _MAX_DELAYS, Bounds, Check, _validate
from ibkr_bridge.config._values import _METADATA, DEFAULT_MAX_LENGTH, _converter, _Seconds

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
