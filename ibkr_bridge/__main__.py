"""``python -m ibkr_bridge`` / ``ibkr-bridge``: the service entry point.

``run`` (the default) loads the configuration (``.env`` and the environment), makes sure
the two tables exist, and runs the Bridge until SIGINT or SIGTERM, then stops cleanly.

Exit codes: 0 stopped cleanly; 2 bad configuration or usage; 3 the database tables exist
in a shape the bridge cannot write to; 4 another bridge holds the buffer; 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from .bridge import Bridge
from .buffer import BufferLockedError
from .config import ConfigError, Settings, load_settings
from .errors import SchemaError
from .logs import configure_logging

log = logging.getLogger("ibkr_bridge")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_SCHEMA = 3
EXIT_LOCKED = 4


def _settings(args: argparse.Namespace) -> Settings:
    import os

    environ = dict(os.environ)
    if getattr(args, "mode", None):
        environ["IB_API_MODE"] = args.mode
    return load_settings(environ, dotenv_path=args.env_file)


async def serve(settings: Settings) -> int:
    """Run the bridge until a signal asks it to stop."""
    bridge = Bridge(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await bridge.start()
    log.info("ibkr-bridge running in %s mode; stop with Ctrl-C or SIGTERM", settings.api_mode)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await bridge.stop()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"ibkr-bridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level)
    for key in settings.unknown_keys:
        log.warning("unknown setting %s ignored (a typo?)", key)
    try:
        return asyncio.run(serve(settings))
    except SchemaError as exc:
        log.error("%s", exc)
        return EXIT_SCHEMA
    except BufferLockedError as exc:
        log.error("%s", exc)
        return EXIT_LOCKED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibkr-bridge",
        description="Feed PostgreSQL with an Interactive Brokers portfolio's net Greeks.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad configuration, 3 bad table shape, "
        "4 buffer locked by another bridge.",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the service (the default)")
    for p in (parser, run):
        p.add_argument("--env-file", default=".env", help="dotenv file to read (default .env)")
        p.add_argument("--mode", choices=["SOCKET", "PORTAL"], help="override IB_API_MODE")
    run.set_defaults(func=cmd_run)
    parser.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
