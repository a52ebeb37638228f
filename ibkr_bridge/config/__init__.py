"""Settings: every ``IB_*``, ``IBKR_*``, ``BRIDGE_*`` key declared, loaded and documented.

The declarations and loader live in :mod:`ibkr_bridge.config.settings`; this package re-exports
its public names, and ``python -m ibkr_bridge.config`` regenerates the reference files.
"""

from __future__ import annotations

from ibkr_bridge.config.settings import (
    FOREIGN_KEYS,
    LOG_LEVELS,
    OUR_PREFIXES,
    ApiMode,
    Bounds,
    ConfigError,
    DatabaseConfig,
    LogFormat,
    MissingLegs,
    SettingKey,
    Settings,
    load_settings,
    main,
    redact_dsn,
    render_configuration_doc,
    render_env_example,
    setting_keys,
)

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
