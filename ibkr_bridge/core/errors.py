"""Every exception class of ibkr-bridge, as one hierarchy under :class:`BridgeError`.

The hierarchy (generated from the classes by ``python -m ibkr_bridge.core.error_tree``)::

<!-- error-tree:start -->

    BridgeError                                 Anything ibkr-bridge raises on purpose
    ├── ConfigError (ValueError)                Bad settings; problems lists every one at once
    ├── RecordFormatError (ValueError)          A buffer line that is not a record we can read
    ├── IllegalTransition (ValueError)          A trigger the state does not allow; nothing changed
    ├── LifecycleError (RuntimeError)           An object used out of order (a Bridge started twice)
    ├── SchemaError                             A bridge table has a shape the bridge cannot write
    ├── StoreError                              A database operation failed (the cause is chained)
    │   ├── TransientStoreError                 Not the data: the breaker opens, rows wait
    │   └── PermanentStoreError                 This record's data (SQLSTATE 22/23): rejected
    ├── JsonlBufferError                        The crash-safe JSONL buffer failed
    │   ├── BufferLockedError                   Another process holds the buffer's lock
    │   ├── BufferFullError                     The size cap is reached; nothing was written
    │   ├── BufferFormatError                   A file of an unknown version; left untouched
    │   └── BufferPathError                     The path is a symlink, a directory, not permitted
    ├── RejectedFileChangedError (OSError)      .rejected was replaced while being rewritten
    ├── GatewayError                            The IBKR gateway misbehaved or refused
    │   ├── AccountSelectionError (ValueError)  IB_ACCOUNT names an account the login does not
    │   │                                       manage, or the login has none
    │   ├── NeedsLoginError                     Client Portal: only a human login can help
    │   └── HandshakeError                      check: the peer is not a TWS API server
    ├── FrameError (ValueError)                 Simulator: bytes that are not a TWS API frame
    ├── FaultScriptError (ValueError)           Simulator: a fault script that cannot run
    └── CertificateError (RuntimeError)         Simulator: no certificate (openssl failed)

<!-- error-tree:end -->

Each class is raised by one area (``ConfigError`` by :mod:`ibkr_bridge.config`, the buffer
errors by :mod:`ibkr_bridge.storage.buffer`, ...) and is re-exported there, so callers may
import it from either place. A class that is also a builtin error (``ValueError``,
``RuntimeError``, ``OSError``) stays one, so older ``except ValueError`` code still works.

This module imports nothing but the standard library, so every layer (the pure core too)
can raise these. Database failures are classified by meaning in
:mod:`ibkr_bridge.storage.dberrors`.
"""

from __future__ import annotations

from collections.abc import Iterable

#: No problem line of a ConfigError is longer than this.
PROBLEM_CHARS = 400


class BridgeError(Exception):
    """Anything ibkr-bridge raises on purpose."""


# --- configuration ---------------------------------------------------------------------


def _bounded(problem: str) -> str:
    if len(problem) <= PROBLEM_CHARS:
        return problem
    return problem[: PROBLEM_CHARS - 3] + "..."


class ConfigError(BridgeError, ValueError):
    """Bad settings; ``problems`` lists every one at once."""

    def __init__(self, problems: Iterable[str]) -> None:
        # A last guard: a problem line never grows past PROBLEM_CHARS, whatever it quotes.
        self.problems: tuple[str, ...] = tuple(_bounded(problem) for problem in problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        header = f"invalid configuration ({count} problem{'' if count == 1 else 's'}):"
        return "\n".join([header, *(f"  {problem}" for problem in self.problems)])


# --- records and state machines (the pure core) ----------------------------------------


class RecordFormatError(BridgeError, ValueError):
    """A buffer line that is not a record we can read."""


class IllegalTransition(BridgeError, ValueError):
    """A trigger the state does not allow; nothing changed."""

    def __init__(self, machine: str, state: str, trigger: str, reason: str = "") -> None:
        self.machine = machine
        self.state = state
        self.trigger = trigger
        self.reason = reason
        message = f"{machine}: trigger {trigger!r} is not allowed in state {state}"
        super().__init__(f"{message} ({reason})" if reason else message)


class LifecycleError(BridgeError, RuntimeError):
    """An object used out of order (a Bridge started twice)."""


# --- storage ---------------------------------------------------------------------------


class SchemaError(BridgeError):
    """A bridge table has a shape the bridge cannot write."""


class StoreError(BridgeError):
    """A database operation failed (the cause is chained)."""


class TransientStoreError(StoreError):
    """Not the data: the breaker opens, rows wait."""


class PermanentStoreError(StoreError):
    """This record's data (SQLSTATE 22/23): rejected."""


class JsonlBufferError(BridgeError):
    """The crash-safe JSONL buffer failed."""


class BufferLockedError(JsonlBufferError):
    """Another process holds the buffer's lock."""


class BufferFullError(JsonlBufferError):
    """The size cap is reached; nothing was written."""


class BufferFormatError(JsonlBufferError):
    """A file of an unknown version; left untouched."""


class BufferPathError(JsonlBufferError):
    """The path is a symlink, a directory, not permitted.

    A configuration problem: nothing was touched, and retrying cannot help.
    """


class RejectedFileChangedError(BridgeError, OSError):
    """``.rejected`` was replaced while being rewritten."""


# --- the IBKR side ---------------------------------------------------------------------


class GatewayError(BridgeError):
    """The IBKR gateway misbehaved or refused."""


class AccountSelectionError(GatewayError, ValueError):
    """``IB_ACCOUNT`` names an account the login does not manage, or the login has none."""


class NeedsLoginError(GatewayError):
    """Client Portal: only a human login can help."""


class HandshakeError(GatewayError):
    """``check``: the peer is not a TWS API server."""


# --- the simulators --------------------------------------------------------------------


class FrameError(BridgeError, ValueError):
    """Simulator: bytes that are not a TWS API frame."""


class FaultScriptError(BridgeError, ValueError):
    """Simulator: a fault script that cannot run."""


class CertificateError(BridgeError, RuntimeError):
    """Simulator: no certificate (``openssl`` failed)."""
