"""``python -m ibkr_bridge.diagrams``, the documented command (:mod:`ibkr_bridge.core.diagrams`)."""

from __future__ import annotations

import sys

from ibkr_bridge.core.diagrams import main

if __name__ == "__main__":
    sys.exit(main())
