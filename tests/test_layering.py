"""The package's layering is a checked contract: ``[tool.importlinter]`` in pyproject.toml.

ops above service above storage | feeds above config above core; core imports no IO library;
the library does not import the simulators or test helpers; health does not import the
Bridge, nor the doctor the CLI. The second test proves the check can fail: a copy of the
package with one wrong import must be refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = (
    "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
)


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``root``'s pyproject.toml, resolving ``ibkr_bridge`` in ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True, check=False
    )


def test_the_package_keeps_its_layers() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        ("core/records.py", "from ibkr_bridge.storage import store", "Layers"),
        ("config/settings.py", "from ibkr_bridge.feeds import protocol", "Layers"),
        ("storage/sink/__init__.py", "from ibkr_bridge.service import bridge", "Layers"),
        ("storage/store/__init__.py", "from ibkr_bridge.feeds import ratelimit", "Layers"),
        ("core/clock.py", "import aiohttp", "The pure core imports no IO library"),
        ("service/health.py", "from ibkr_bridge.service import bridge", "No cycle"),
        ("ops/doctor.py", "from ibkr_bridge.ops import cli", "No cycle"),
        (
            "storage/store/__init__.py",
            "from ibkr_bridge import testing",
            "simulators or the test helpers",
        ),
    ],
)
def test_a_wrong_import_breaks_the_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(
        ROOT / "ibkr_bridge",
        tmp_path / "ibkr_bridge",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    target = tmp_path / "ibkr_bridge" / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
