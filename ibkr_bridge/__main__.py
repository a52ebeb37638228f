"""``python -m ibkr_bridge`` / ``ibkr-bridge``: the command line of :mod:`ibkr_bridge.ops.cli`.

Without a command it runs the service, exactly like ``ibkr-bridge run``. The exit codes are
in :mod:`ibkr_bridge.ops.exitcodes`.
"""

from __future__ import annotations

import sys

from ibkr_bridge.ops.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
