"""What every command shares: settings from the options, error text, the store."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Final

from ibkr_bridge.config import ConfigError, LogFormat, Settings, load_settings
from ibkr_bridge.core.errors import SchemaError, StoreError
from ibkr_bridge.core.redaction import redact_secrets
from ibkr_bridge.ops.exitcodes import EXIT_CONFIG, EXIT_FAILURE, EXIT_SCHEMA
from ibkr_bridge.ops.logs import configure_logging

if TYPE_CHECKING:
    from ibkr_bridge.storage.store import Store


log = logging.getLogger("ibkr_bridge")

PROG: Final = "ibkr-bridge"


# --- shared helpers --------------------------------------------------------------------


def _environ(args: argparse.Namespace) -> dict[str, str]:
    environ = dict(os.environ)
    if getattr(args, "mode", None):
        environ["IB_API_MODE"] = args.mode
    return environ


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(_environ(args), dotenv_path=args.env_file)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    # Driver messages can quote a connection string; never let a password through.
    return redact_secrets(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _settings_or_exit(args: argparse.Namespace) -> Settings | int:
    """The settings, or EXIT_CONFIG after printing every problem."""
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Tools report on stdout; the library's warnings (buffer repairs, ...) go to stderr.
    configure_logging(LogFormat.TEXT, "WARNING")
    return settings


async def _open_store(settings: Settings) -> Store:
    from ibkr_bridge.storage.store import PositionTables, Store

    return await Store.open(
        **settings.database.connect_kwargs(),
        connect_timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
        # `schema --apply` makes position_greeks too when the bridge will write it.
        positions=PositionTables(retention_days=settings.retention_days)
        if settings.position_rows
        else None,
    )


async def _schema_or_exit(settings: Settings, store: Store, nothing_done: str) -> int | None:
    """None once the tables are ready, else the exit code after printing why not."""
    try:
        await store.ensure_schema()
    except SchemaError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_SCHEMA
    except StoreError as exc:
        print(f"{PROG}: {settings.database.redacted()}: {exc}; {nothing_done}", file=sys.stderr)
        return EXIT_FAILURE
    return None
