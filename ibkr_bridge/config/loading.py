"""Loading settings from the environment and an optional .env file, every problem at once."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from dotenv import dotenv_values

from ibkr_bridge.config._checks import _check_text, _validate
from ibkr_bridge.config._keys import _fields_with_keys, _keys_of
from ibkr_bridge.config._values import FOREIGN_KEYS, OUR_PREFIXES, _converter
from ibkr_bridge.config.dsn import DatabaseConfig, redact_dsn
from ibkr_bridge.config.settings import Settings, _cross_problems, setting_keys
from ibkr_bridge.core.errors import ConfigError

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
