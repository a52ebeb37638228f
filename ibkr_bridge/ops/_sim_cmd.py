"""``ibkr-bridge sim socket|portal``: runs an IBKR simulator (``python -m ibkr_bridge.sim``)."""

from __future__ import annotations

import argparse


def cmd_sim(args: argparse.Namespace) -> int:
    from ibkr_bridge.sim.__main__ import main as sim_main

    return sim_main(["--log-level", args.log_level, args.simulator, *args.sim_args])
