"""Fault-matrix rows: nothing a gateway says is trusted into a log verbatim (issue 10).

Each row runs the real Bridge against a gateway simulator and a real PostgreSQL through the
harness (same invariants as every row: nothing lost, duplicated or wrong, every event in
``api_logs``), and checks what only it promises:

* ``portal-error-body-echoes-session``: error bodies that echo the session token and
  cookie; neither value is in ``api_logs`` or in the service log, though the errors are;
* ``portal-50MB-answers``: 50 MB snapshot answers streamed without a length; refused
  unread with one ``oversized_answer`` event, rows resume;
* ``gw-error-text-with-secret``: a 10,000-character IB error message carrying a session
  value; stored cut (with a marker) and redacted;
* ``gw-garbage-frame-flood``: 5,000 framed garbage messages; the session is kept, and the
  service log grows by a bounded number of short lines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ibkr_bridge import ConnectionState
from ibkr_bridge.feeds.portal import MAX_BODY_BYTES
from ibkr_bridge.ops.logs import (
    GATEWAY_LOG_BURST,
    GATEWAY_TEXT_LIMIT,
    RedactingFilter,
    TextFormatter,
    forget_secrets,
    remember_secret,
)
from ibkr_bridge.sim.portal import SNAPSHOT
from ibkr_bridge.testing import TestDatabase

from .harness import Case, World, assert_report, run_case

TOKEN = "c0ffee-session-" + "9f" * 12
LONG_TEXT = "order routing note: " + "w" * 10_000 + f" (session {TOKEN})"


class ServiceLog(logging.Handler):
    """The lines the service would write (the redacting filter and text formatter)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.addFilter(RedactingFilter())
        self.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def capture(w: World) -> ServiceLog:
    handler = ServiceLog()
    root = logging.getLogger()
    root.addHandler(handler)

    async def remove() -> None:
        root.removeHandler(handler)

    w.cleanups.append(remove)
    w.scratch["log"] = handler
    return handler


@pytest.fixture(autouse=True)
def no_learned_secrets() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


async def stored_texts(w: World) -> list[str]:
    _, logs = await w.fetch_tables()
    return [f"{r['message']} {r['detail']}" for r in logs]


def leaks(secret: str, text: str) -> bool:
    """Whether any 8 characters in a row of ``secret`` show in ``text`` (half a token is a leak)."""
    return any(secret[i : i + 8] in text for i in range(len(secret) - 7))


def assert_secret_free(texts: list[str], lines: list[str], secrets: tuple[str, ...]) -> None:
    for secret in secrets:
        assert not [t for t in texts if leaks(secret, t)], f"{secret[:6]}... in api_logs"
        assert not [line for line in lines if leaks(secret, line)], f"{secret[:6]}... in the log"


# -- PORTAL ------------------------------------------------------------------------------------


async def portal_echo(w: World) -> None:
    capture(w)
    await w.data_ready()
    await w.ticks(2)
    w.scratch["secrets"] = w.portal_sim.session_secrets
    w.portal_sim.echo_session(60.0)  # data endpoints answer 500 quoting token and cookie
    await w.run(120.0)
    assert w.portal_sim.count(status=500) > 0, "the fault never happened"


async def verify_portal_echo(w: World) -> None:
    texts = await stored_texts(w)
    assert any("internal error handling" in t for t in texts), "the errors were not logged"
    assert_secret_free(texts, w.scratch["log"].lines, w.scratch["secrets"])


async def portal_huge(w: World) -> None:
    await w.data_ready()
    await w.ticks(2)
    # Chunked without a length: the feed can only refuse it while it streams in.
    w.portal_sim.huge_body(50 * 1024 * 1024, 30.0, chunked=True, endpoints=[SNAPSHOT])
    await w.run(60.0)
    oversized = [e for e in w.events if e.event == "oversized_answer"]
    assert len(oversized) == 1, [(e.timestamp, e.message, e.detail) for e in oversized]
    assert oversized[0].detail["limit"] == MAX_BODY_BYTES


async def verify_portal_huge(w: World) -> None:
    _, logs = await w.fetch_tables()
    stored = [r["message"] for r in logs if r["event"] == "oversized_answer"]
    assert len(stored) == 1, stored
    assert "refused unread" in stored[0]


# -- SOCKET ------------------------------------------------------------------------------------


async def socket_error_text(w: World) -> None:
    capture(w)
    remember_secret(TOKEN)  # as a feed does with the session values it learns
    await w.data_ready()
    await w.ticks(1)
    await w.sim.error_message(2119, LONG_TEXT)
    await w.ticks(1)
    errors = [e for e in w.events if e.event == "error" and e.detail.get("code") == 2119]
    assert len(errors) == 1, "the IB message was not reported"
    assert len(errors[0].message) < GATEWAY_TEXT_LIMIT + 60
    assert w.state is ConnectionState.LIVE


async def verify_socket_error_text(w: World) -> None:
    texts = await stored_texts(w)
    cut = [t for t in texts if "order routing note" in t]
    assert len(cut) == 1
    assert f"[truncated, {len(LONG_TEXT)} chars]" in cut[0]
    assert_secret_free(texts, w.scratch["log"].lines, (TOKEN,))


async def socket_flood(w: World) -> None:
    log = capture(w)
    await w.data_ready()
    await w.ticks(1)
    before = len(log.lines)
    await w.sim.garbage(1024, framed=True, count=5_000)
    await w.ticks(2)
    await w.data_ready()
    assert not w.reached("connection", "BACKOFF"), "framed garbage ended the session"
    flood = [line for line in log.lines[before:] if "ib_async" in line]
    assert 1 <= len(flood) <= GATEWAY_LOG_BURST + 1, len(flood)
    assert max(len(line) for line in flood) < 1000
    w.scratch["flood_lines"] = len(flood)


CASES = [
    Case(
        "portal-error-body-echoes-session",
        portal_echo,
        mode="PORTAL",
        verify=verify_portal_echo,
        note="session token and cookie in neither api_logs nor the service log",
    ),
    Case(
        "portal-50MB-answers",
        portal_huge,
        mode="PORTAL",
        verify=verify_portal_huge,
        note="chunked 50 MB snapshots refused unread (4 MiB cap), one event",
    ),
    Case(
        "gw-error-text-with-secret",
        socket_error_text,
        verify=verify_socket_error_text,
        note="10,000-char IB message stored cut to 300 chars and redacted",
    ),
    Case(
        "gw-garbage-frame-flood",
        socket_flood,
        note="5,000 framed garbage messages: session kept, <= 21 log lines",
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
async def test_gateway_text(case: Case, db: TestDatabase, tmp_path: Path) -> None:
    assert_report(await run_case(case, db, tmp_path))


def test_cases_have_unique_ids() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), json.dumps(ids)
