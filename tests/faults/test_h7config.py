"""Issue 14.9 through the real service: absurd, overlong and forged settings exit 2, listed.

The service is started as the systemd unit starts it (``python -m ibkr_bridge run``); the
configuration exit code (2) is the one the shipped unit does not restart on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .harness import Outcome, record

ROOT = Path(__file__).resolve().parents[2]

# What issue 14.9 measured on main, one per kind of problem.
HOSTILE: dict[str, str] = {
    "BRIDGE_POLL_INTERVAL": "1e-6",  # wrote ~31,000 rows in 6 s
    "IB_CONNECT_TIMEOUT": "1e308",
    "BRIDGE_RETRY_INTERVAL": "1e-300",
    "IBKR_GATEWAY_CA": "/" + "c" * 10_239,  # OSError: File name too long
    "BRIDGE_RESET_TZ": "z" * 10_240,  # OSError from zoneinfo
    "PGHOST": "db.example.com\nhost=evil",
    "PGUSER": "bridge\tadmin",
    "PGDATABASE": "greeks\x1b[2J",
    "BRIDGE_BUFFER_PATH": "/tmp/buffer\n.jsonl",
}


def test_service_exits_2_listing_every_hostile_setting_briefly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "IBKR_", "BRIDGE_"))}
    env = {k: v for k, v in env.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    env.update(HOSTILE)
    env["PYTHONPATH"] = str(ROOT)
    case = "config-hostile-values-cli"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ibkr_bridge", "run", "--env-file", str(tmp_path / "none")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
        lines = done.stderr.splitlines()
        assert lines[0].endswith(f"invalid configuration ({len(HOSTILE)} problems):"), lines[:3]
        named = {line.split(":", 1)[0].strip() for line in lines[1:]}
        assert named == set(HOSTILE), set(HOSTILE) ^ named
        # One line per problem (a newline in a value cannot forge one), each short.
        assert len(lines) == 1 + len(HOSTILE), lines
        assert max(len(line) for line in lines) < 250, max(lines, key=len)
        assert "Traceback" not in done.stderr
        assert "\x1b" not in done.stderr
    except BaseException as exc:
        record(Outcome(case, f"FAILED: {type(exc).__name__}: {exc}"))
        raise
    record(Outcome(case, "passed", note=f"exit 2, {len(named)} settings named, lines < 250"))
