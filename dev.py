#!/usr/bin/env python3
"""One entry point for a fresh machine that has only Python 3.11+.

    python3 dev.py demo     # the demo: simulator + real (or embedded) PostgreSQL
    python3 dev.py test     # install what the tests need, run the whole suite

It creates ``.venv`` beside this file, installs the project with its test extras
into it (again only when ``pyproject.toml`` changed), then runs the command
inside it. Extra arguments go to the command (e.g. ``dev.py test -m "not slow"``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".ibkr-bridge-installed"


def _ensure_env() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (this file must run on old Pythons to say so)
        sys.exit(f"ibkr-bridge needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    print("installing ibkr-bridge and its test dependencies into .venv ...", flush=True)
    pip = [str(PY), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__)
        return 2
    _ensure_env()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        args = [str(PY), str(ROOT / "examples" / "run.py"), *rest]
    else:
        args = [str(PY), "-m", "pytest", *rest]
    return subprocess.run(args, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
