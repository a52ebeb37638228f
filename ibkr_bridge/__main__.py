"""``python -m ibkr_bridge``: the service entry point."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("the service entry point arrives with the SOCKET bridge", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
