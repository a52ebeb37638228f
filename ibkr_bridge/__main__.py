"""``python -m ibkr_bridge`` / ``ibkr-bridge``: the command line of :mod:`ibkr_bridge.ops.cli`.

Without a command it runs the service, exactly like ``ibkr-bridge run``.
"""

from __future__ import annotations

import sys

from ibkr_bridge.ops.cli import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_SCHEMA,
    build_parser,
    cmd_run,
    main,
    serve,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_SCHEMA",
    "build_parser",
    "cmd_run",
    "main",
    "serve",
]

if __name__ == "__main__":
    sys.exit(main())
