"""The package version, from the installed distribution's metadata, below every layer.

A source tree that was never installed (``PYTHONPATH=. python -m ibkr_bridge``) has no
metadata: the version is then read from the ``pyproject.toml`` beside the package.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path
from typing import Final

DISTRIBUTION: Final = "ibkr-bridge"
UNKNOWN: Final = "0+unknown"


def _source_tree_version(pyproject: Path) -> str:
    try:
        with pyproject.open("rb") as file:
            project = tomllib.load(file).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return UNKNOWN
    version = project.get("version") if project.get("name") == DISTRIBUTION else None
    return version if isinstance(version, str) else UNKNOWN


def package_version(pyproject: Path = Path(__file__).parents[2] / "pyproject.toml") -> str:
    """The installed version of ibkr-bridge, else the source tree's, else ``0+unknown``."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return _source_tree_version(pyproject)


__version__: Final = package_version()
