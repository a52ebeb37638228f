"""The exit codes every command shares (the CLI and the doctor), defined below both."""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_SCHEMA",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2
EXIT_SCHEMA: Final = 3
EXIT_LOCKED: Final = 4

EXIT_CODES_HELP: Final = """\
exit codes:
  0  ok
  1  a check failed, or a runtime failure
  2  bad configuration or usage (also: the buffer path is a symlink, a directory,
     not permitted, or holds a buffer of an unknown version)
  3  the bridge's tables exist in a shape it cannot write to
  4  the buffer is locked by another running bridge (replay-rejected: another replay)"""
