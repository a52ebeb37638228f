"""Nothing a gateway says is trusted into a log verbatim; hostile bodies are bounded.

* An error body that echoes the session token and cookie (the simulator's ``echo_session``
  fault) reaches neither the service log nor ``api_logs`` (real PostgreSQL) with the
  secret in it: the feed learns the session values and quotes gateway text redacted and cut.
* A 50 MB answer (with a Content-Length, or chunked without one) is refused unread with an
  ``oversized_answer`` event; a subprocess measures that peak RSS stays under 150 MB.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from ibkr_bridge import ConnectionState
from ibkr_bridge.core.errors import GatewayError
from ibkr_bridge.feeds.portal import MAX_BODY_BYTES, PortalFeed
from ibkr_bridge.ops.logs import (
    GATEWAY_TEXT_LIMIT,
    RedactingFilter,
    TextFormatter,
    forget_secrets,
    gateway_text,
    redact_secrets,
    remember_secret,
)
from ibkr_bridge.sim.faults import FaultScriptError
from ibkr_bridge.sim.portal import POSITIONS, SNAPSHOT, parse_portal_fault_script
from ibkr_bridge.testing import wait_until
from tests.e2e.test_portal_e2e import World, world  # noqa: F401  (the fixture)

from .test_portal_feed import Rig, clock, rig  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[3]
FIFTY_MB = 50 * 1024 * 1024


def leaks(secret: str, text: str) -> bool:
    """Whether any 8 characters in a row of ``secret`` show in ``text`` (half a token is a leak)."""
    return any(secret[i : i + 8] in text for i in range(len(secret) - 7))


@pytest.fixture(autouse=True)
def no_learned_secrets() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


class ServiceLog(logging.Handler):
    """The lines the service would write: the redacting filter and formatter, on root."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.addFilter(RedactingFilter())
        self.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []
        self.raw: list[str] = []

    def handle(self, record: logging.LogRecord) -> bool:
        self.raw.append(record.getMessage())  # before the filter: what the code logged
        return super().handle(record)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def service_log() -> Iterator[ServiceLog]:
    handler = ServiceLog()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


# -- the redactor -------------------------------------------------------------------------------


def test_gateway_text_is_cut_with_a_marker_and_kept_on_one_line() -> None:
    text = "line one\nline two\r\x1b[31m" + "x" * 5000
    out = gateway_text(text)
    assert "\n" not in out
    assert "\x1b" not in out
    assert out.startswith("line one?line two?")
    assert out.endswith(f"...[truncated, {len(text)} chars]")
    assert len(out) <= GATEWAY_TEXT_LIMIT + 40
    assert gateway_text("short") == "short"


def test_remembered_session_values_are_redacted_everywhere() -> None:
    token = "0123456789abcdef" * 2
    remember_secret(token)
    remember_secret(token[:16])  # a session id cut from the token: the longer one wins
    remember_secret("short")  # too short to be a secret: ordinary words stay readable
    text = f"error for session {token}; id {token[:16]}; short"
    assert redact_secrets(text) == "error for session ***; id ***; short"
    # Across the cut: the secret is redacted before the text is truncated.
    cut = gateway_text("y" * (GATEWAY_TEXT_LIMIT - 5) + token)
    assert token[:5] not in cut.replace("y", "")
    assert "***" in cut


def test_ib_async_records_are_cut_and_their_traceback_dropped(service_log: ServiceLog) -> None:
    garbage = "\x07" + "G" * 100_000
    try:
        int(garbage)
    except ValueError:
        logging.getLogger("ib_async.decoder").exception("Error handling fields: %s", [garbage])
    (line,) = service_log.lines
    assert len(line) < 1000
    assert "ValueError" in line
    assert "Traceback" not in line


# -- the simulator's knobs ----------------------------------------------------------------------


def test_fault_scripts_accept_the_new_faults_and_check_them() -> None:
    steps = parse_portal_fault_script(
        [
            {"at": 1, "fault": "echo_session", "seconds": 5, "status": 400},
            {"at": 2, "fault": "huge_body", "nbytes": 1000, "chunked": True},
            {"at": 3, "fault": "fixed_greeks", "values": {"theta": "-2.000"}},
        ]
    )
    assert [s.fault for s in steps] == ["echo_session", "huge_body", "fixed_greeks"]
    for bad in (
        {"at": 1, "fault": "huge_body"},
        {"at": 1, "fault": "huge_body", "nbytes": -1},
        {"at": 1, "fault": "fixed_greeks", "values": {"rho": "1"}},
        {"at": 1, "fault": "echo_session", "endpoints": [1]},
    ):
        with pytest.raises(FaultScriptError):
            parse_portal_fault_script([bad])


# -- the feed against the simulator -------------------------------------------------------------


async def test_echoed_session_never_reaches_the_listener_or_the_log(
    rig: Rig,  # noqa: F811
    service_log: ServiceLog,
) -> None:
    await rig.connect()
    await rig.rows()
    secrets = rig.sim.session_secrets
    rig.sim.echo_session()
    await rig.run(3 * rig.feed.positions_interval)
    assert rig.sim.count(status=500) > 0
    said = [e[2] + json.dumps(e[3], default=str) for e in rig.listener.events]
    assert any("internal error handling" in m for m in said), "the echo was never reported"
    for secret in secrets:
        assert not any(leaks(secret, m) for m in said)
        assert not any(leaks(secret, line) for line in service_log.lines)
        assert not any(leaks(secret, m) for m in service_log.raw)


async def test_echo_during_connect_is_redacted_in_the_error(rig: Rig) -> None:  # noqa: F811
    rig.sim.echo_session(endpoints=[POSITIONS])
    with pytest.raises(Exception) as caught:  # noqa: PT011  (whatever connect raises)
        await rig.connect()
    text = str(caught.value) + " ".join(e[2] for e in rig.listener.events)
    assert "internal error handling" in text
    for secret in rig.sim.session_secrets:
        assert not leaks(secret, text)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_50_mb_answer_is_refused_with_an_event(
    rig: Rig,  # noqa: F811
    chunked: bool,
) -> None:
    await rig.connect()
    await rig.rows()
    rig.sim.huge_body(FIFTY_MB, chunked=chunked, endpoints=[SNAPSHOT])
    await rig.run(3 * rig.feed.poll_interval)
    oversized = rig.listener.named("oversized_answer")
    assert len(oversized) == 1, "one event per endpoint and episode"
    _, status, message, detail = oversized[0]
    assert status == "warning"
    assert detail == {"endpoint": SNAPSHOT, "status": 200, "limit": MAX_BODY_BYTES}
    assert "refused unread" in message
    assert (str(FIFTY_MB) in message) != chunked
    assert rig.feed.connected, "a hostile body does not end the session"
    rig.sim.clear_faults()
    await rig.run(2 * rig.feed.poll_interval)
    assert rig.feed.snapshot(rig.clock.now()), "data flows again once the answers are sane"


def test_peak_rss_with_50_mb_answers_stays_under_150_mb() -> None:
    # A memory bound, measured in a fresh process (not a timing).
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "feeds" / "portal" / "rss_child.py"), str(FIFTY_MB)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    refused = [m for e, m in result["events"] if e == "oversized_answer"]
    assert refused, result["events"]
    assert result["snapshots_answered"] >= 6
    assert result["connected"]
    assert result["peak_kib"] < 150 * 1024, result


# -- end to end: Bridge, simulator, real PostgreSQL ---------------------------------------------


async def test_echoed_session_is_in_neither_the_service_log_nor_api_logs(
    world: World,  # noqa: F811
    service_log: ServiceLog,
) -> None:
    await world.run(15.0)
    secrets = world.sim.session_secrets
    world.sim.echo_session(90.0)
    await world.run(200.0)
    await wait_until(lambda: world.state is ConnectionState.LIVE)
    assert world.sim.count(status=500) > 0
    events = await world.events()
    texts = [f"{e['message']} {e['detail']}" for e in events]
    assert any("internal error handling" in t for t in texts), "the echo never reached api_logs"
    for secret in secrets:
        assert not [t for t in texts if leaks(secret, t)]
        assert not [line for line in service_log.lines if leaks(secret, line)]
        assert not [m for m in service_log.raw if leaks(secret, m)]
    assert len(await world.rows()) > 3


async def test_a_body_nested_too_deep_for_the_json_parser_is_garbage_not_a_crash() -> None:
    # Within the size bound, but json.loads raises RecursionError on it.
    async def deep(request: web.Request) -> web.Response:
        return web.Response(text="[" * 200_000, content_type="application/json")

    app = web.Application()
    app.router.add_route("POST", "/v1/api/iserver/auth/status", deep)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    feed = PortalFeed(gateway_url=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(GatewayError, match="not an auth status"):
            await feed.connect()
    finally:
        await feed.disconnect()
        await runner.cleanup()
