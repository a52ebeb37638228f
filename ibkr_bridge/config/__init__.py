"""Typed, validated settings read from the environment and an optional ``.env`` file.

The package: :mod:`~ibkr_bridge.config.settings` (the Settings record),
:mod:`~ibkr_bridge.config.dsn` (DatabaseConfig, DSN checks and redaction),
:mod:`~ibkr_bridge.config.loading`, :mod:`~ibkr_bridge.config.reference` (generated files),
and private helpers (values and converter, checks and bounds, declarations).

Every setting is declared once, as a table of ``settings.toml`` (variable name, type
description, default as written in ``.env``, one-line meaning, and its limits: ``bounds``
for a number, ``max_length`` for the raw text), which becomes an attrs field carrying a
:class:`SettingKey`. From those declarations come the
loader, ``docs/configuration.md`` and ``.env.example``, so the three cannot drift apart (a
test compares the committed files with freshly generated ones).

Limits are data on the declaration: ``bounds = [0.1, 3600]`` and ``unit = "s"`` for
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
``ApiMode``, ``GreeksFallback``, ``LogFormat``, ``MissingLegs``
    String enums for ``IB_API_MODE``, ``BRIDGE_LOG_FORMAT`` and ``BRIDGE_MISSING_LEGS``.
``ConfigError(BridgeError, ValueError)``
    ``.problems`` is a tuple of ``"VARIABLE: what is wrong"`` lines.
``default_of(name) -> Any``
    The typed default of a field (``default_of("retry_interval") == 60.0``): what a
    lower-level constructor uses as its own default, so that each default is written once,
    in ``settings.toml``.
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

from __future__ import annotations

from ibkr_bridge.config._checks import Bounds
from ibkr_bridge.config._declared import default_of
from ibkr_bridge.config._keys import SettingKey
from ibkr_bridge.config._values import (
    FOREIGN_KEYS,
    LOG_LEVELS,
    OUR_PREFIXES,
    SHOWN_CHARS,
    ApiMode,
    GreeksFallback,
    LogFormat,
    MissingLegs,
)
from ibkr_bridge.config.dsn import DatabaseConfig, redact_dsn
from ibkr_bridge.config.loading import load_settings
from ibkr_bridge.config.reference import main, render_configuration_doc, render_env_example
from ibkr_bridge.config.settings import Settings, setting_keys
from ibkr_bridge.core.errors import PROBLEM_CHARS, ConfigError

__all__ = [
    "FOREIGN_KEYS",
    "LOG_LEVELS",
    "OUR_PREFIXES",
    "PROBLEM_CHARS",
    "SHOWN_CHARS",
    "ApiMode",
    "Bounds",
    "ConfigError",
    "DatabaseConfig",
    "GreeksFallback",
    "LogFormat",
    "MissingLegs",
    "SettingKey",
    "Settings",
    "default_of",
    "load_settings",
    "main",
    "redact_dsn",
    "render_configuration_doc",
    "render_env_example",
    "setting_keys",
]
