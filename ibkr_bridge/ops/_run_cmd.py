"""``ibkr-bridge run`` (the default command): the service, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from ibkr_bridge.config import Settings
from ibkr_bridge.core.errors import ConfigError, JsonlBufferError, SchemaError
from ibkr_bridge.ops._common import PROG, _settings
from ibkr_bridge.ops.exitcodes import EXIT_CONFIG, EXIT_LOCKED, EXIT_OK, EXIT_SCHEMA, exit_code_for
from ibkr_bridge.ops.logs import configure_logging
from ibkr_bridge.ops.malloc import pin_mmap_threshold

log = logging.getLogger("ibkr_bridge")


async def serve(settings: Settings) -> int:
    """Run the bridge until a signal asks it to stop."""
    from ibkr_bridge.service.bridge import Bridge

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
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level)
    for key in settings.unknown_keys:
        log.warning("unknown setting %s ignored (a typo?)", key)
    # Before the first socket read: a heap that months of 256 KiB reads fragment only grows.
    pin_mmap_threshold()
    try:
        return asyncio.run(serve(settings))
    except (SchemaError, JsonlBufferError, OSError) as exc:
        # e.g. a buffer file that cannot be read or created: one clear line, no traceback.
        code = exit_code_for(exc)
        log.error("%s" if code in (EXIT_SCHEMA, EXIT_LOCKED) else "cannot start: %s", exc)
        return code
