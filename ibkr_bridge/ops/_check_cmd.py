"""``ibkr-bridge check``: the doctor's report, as a table or ``--json``."""

from __future__ import annotations

import argparse
import asyncio
import json

from ibkr_bridge.ops._common import _environ


def cmd_check(args: argparse.Namespace) -> int:
    from ibkr_bridge.ops.doctor import render_table, run_checks

    report = asyncio.run(run_checks(_environ(args), args.env_file))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        print(render_table(report))
    return report.exit_code
