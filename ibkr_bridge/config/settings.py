"""The Settings record: every IB_*, IBKR_* and BRIDGE_* setting, declared once."""

# _setting() returns an attrs field, not a shared mutable default, which RUF009 cannot see.
# ruff: noqa: RUF009

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import time
from pathlib import Path
from typing import Any, Final

import attrs
from attrs import field, frozen

from ibkr_bridge.config._checks import (
    _PORTS,
    Bounds,
    _account,
    _boolean,
    _client_id,
    _delays,
    _existing_file,
    _host,
    _http_url,
    _int_range,
    _integer,
    _log_level,
    _one_of,
    _optional,
    _path,
    _positive,
    _time_of_day,
    _weekly,
    _zone,
)
from ibkr_bridge.config._keys import (
    _RESET_WINDOW,
    SettingKey,
    _field,
    _keys_of,
    _record_problems,
    _setting,
)
from ibkr_bridge.config._values import (
    ApiMode,
    LogFormat,
    MissingLegs,
    _ByteSize,
    _Seconds,
    _Upper,
)
from ibkr_bridge.config.dsn import DatabaseConfig
from ibkr_bridge.core.errors import ConfigError
from ibkr_bridge.core.resetwindow import MAX_WEEKLY_HOURS, NORTH_AMERICA_WEEKLY, WeeklyWindow


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
