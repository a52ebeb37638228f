"""``python -m ibkr_bridge.config``: rewrite (``--check``: compare) the setting references."""

from __future__ import annotations

import sys

from ibkr_bridge.config.reference import main

if __name__ == "__main__":
    sys.exit(main())
