"""The exit codes every command shares (the CLI and the doctor), and which error gets which."""

from __future__ import annotations

from typing import Final

from ibkr_bridge.core.errors import (
    BufferFormatError,
    BufferLockedError,
    BufferPathError,
    ConfigError,
    SchemaError,
)

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_SCHEMA",
    "exit_code_for",
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

# A person must fix the configuration, the path or the file: a unit does not restart on 2.
_BY_ERROR: Final[tuple[tuple[type[BaseException], int], ...]] = (
    (ConfigError, EXIT_CONFIG),
    (BufferPathError, EXIT_CONFIG),
    (BufferFormatError, EXIT_CONFIG),
    (SchemaError, EXIT_SCHEMA),
    (BufferLockedError, EXIT_LOCKED),
)


def exit_code_for(exc: BaseException) -> int:
    """The exit code a command ends with when ``exc`` stops it (EXIT_FAILURE by default)."""
    return next((code for kind, code in _BY_ERROR if isinstance(exc, kind)), EXIT_FAILURE)
