"""The package version, in one place below every layer that reports it."""

from __future__ import annotations

__version__ = "0.1.0.dev0"
