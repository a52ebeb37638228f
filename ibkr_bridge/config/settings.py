"""The Settings record: every IB_*, IBKR_* and BRIDGE_* setting, and the rules across them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import time
from pathlib import Path
from typing import Any, Final

import attrs
from attrs import field, frozen

from ibkr_bridge.config._declared import DECLARED, declared
from ibkr_bridge.config._keys import SettingKey, _keys_of, _record_problems
from ibkr_bridge.config._values import ApiMode, GreeksFallback, LogFormat, MissingLegs
from ibkr_bridge.config.dsn import DatabaseConfig
from ibkr_bridge.core.errors import ConfigError
from ibkr_bridge.core.resetwindow import WeeklyWindow


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


@frozen(kw_only=True)
@declared
class Settings:
    """Every setting of the bridge, typed and validated (see docs/configuration.md).

    The fields are declared in ``settings.toml`` (variable, default, meaning, limits), in
    this order; here are only their Python types (``= DECLARED``: the default is the table's).
    """

    # IB_*: the TWS API socket side (IB_ACCOUNT serves both modes).
    api_mode: ApiMode = DECLARED
    socket_host: str = DECLARED
    socket_port: int = DECLARED
    client_id: int = DECLARED
    account: str | None = DECLARED
    connect_timeout: float = DECLARED
    probe_interval: float = DECLARED
    probe_timeout: float = DECLARED
    market_data_type: int = DECLARED
    # IBKR_*: the Client Portal side.
    gateway_url: str = DECLARED
    gateway_ca: Path | None = DECLARED
    verify_tls: bool = DECLARED
    tickle_interval: float = DECLARED
    # BRIDGE_*: the bridge's own behaviour.
    poll_interval: float = DECLARED
    buffer_path: Path = DECLARED
    buffer_max_bytes: int = DECLARED
    memory_queue_size: int = DECLARED
    retry_interval: float = DECLARED
    db_connect_timeout: float = DECLARED
    db_command_timeout: float = DECLARED
    batch_size: int = DECLARED
    reset_window_start: time = DECLARED
    reset_window_end: time = DECLARED
    resume_at: time = DECLARED
    reset_tz: str = DECLARED
    weekly_window: WeeklyWindow | None = DECLARED
    backoff: tuple[float, ...] = DECLARED
    steady_retry: float = DECLARED
    http_port: int | None = DECLARED
    http_host: str = DECLARED
    log_format: LogFormat = DECLARED
    log_level: str = DECLARED
    # How current option Greeks must be (docs/greeks.md, "Staleness and missing legs").
    stale_after: float | None = DECLARED
    leg_grace: float = DECLARED
    missing_legs: MissingLegs = DECLARED
    # Model Greeks where IB has none (docs/greeks.md, "Model Greeks").
    greeks_fallback: GreeksFallback = DECLARED
    risk_free_rate: float = DECLARED
    # Per-position rows (docs/greeks.md, "Per-position rows").
    position_rows: bool = DECLARED
    retention_days: int | None = DECLARED

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
