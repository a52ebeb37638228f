"""The doctor's result records (one check, the whole report) and helpers every check shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from attrs import field, frozen
from ib_async.client import Client

from ibkr_bridge.core.redaction import redact_secrets
from ibkr_bridge.ops.exitcodes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_SCHEMA

Status = Literal["OK", "WARN", "FAIL", "SKIP"]

# The range ib_async offers: a Gateway that answers this handshake will answer the bridge.
TWS_MIN_VERSION: Final[int] = int(Client.MinClientVersion)
TWS_MAX_VERSION: Final[int] = int(Client.MaxClientVersion)
_MAX_REPLY: Final = 4096  # the handshake reply is two short fields
_NEAR_FULL: Final = 0.8


@frozen
class CheckResult:
    """One line of the report; ``code`` is the exit status a FAIL here stands for."""

    name: str
    status: Status
    detail: str
    data: Mapping[str, Any] = field(factory=dict)
    code: int = EXIT_FAILURE


@frozen
class DoctorReport:
    checks: tuple[CheckResult, ...]

    @property
    def exit_code(self) -> int:
        """2 for bad configuration, else 3 for a table shape, else 1 for any FAIL, else 0."""
        codes = {c.code for c in self.checks if c.status == "FAIL"}
        for code in (EXIT_CONFIG, EXIT_SCHEMA, EXIT_FAILURE):
            if code in codes:
                return code
        return EXIT_FAILURE if codes else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "checks": [
                {"name": c.name, "status": c.status, "detail": c.detail, "data": dict(c.data)}
                for c in self.checks
            ],
        }


def _describe(exc: BaseException) -> str:
    text = str(exc)
    # Driver messages can quote a connection string; never let a password through.
    return redact_secrets(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
