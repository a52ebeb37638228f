"""Service logs: text or JSON lines, and no secret ever in a line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from ibkr_bridge.config import LogFormat
from ibkr_bridge.ops.logs import configure_logging, redact_secrets


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("connect postgresql://bob:s3cr@t@db:5432/x failed", "postgresql://bob:***@db:5432/x"),
        ("host=db password=hunter2 user=x", "password=*** user=x"),
        ("PASSWORD: 'a b c' next", "PASSWORD: *** next"),
        ("user@example.com wrote", "user@example.com wrote"),
    ],
)
def test_redact_secrets(text: str, expected: str) -> None:
    out = redact_secrets(text)
    assert expected in out
    for secret in ("s3cr@t", "hunter2", "a b c"):
        assert secret not in out


def test_json_lines_carry_extras_and_no_password(restore_root: None) -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, "INFO", stream=stream)
    log = logging.getLogger("ibkr_bridge.test")
    log.info("database %s is down", "postgresql://u:pw123@h/db", extra={"attempt": 3})
    try:
        raise OSError("cannot reach postgresql://u:pw123@h/db")
    except OSError:
        log.exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["message"] == "database postgresql://u:***@h/db is down"
    assert lines[0]["attempt"] == 3
    assert lines[0]["level"] == "info"
    assert "pw123" not in stream.getvalue()
    assert "exception" in lines[1]


def test_text_format_and_reconfiguring_replaces_our_handler(restore_root: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LogFormat.TEXT, "INFO", stream=first)
    configure_logging(LogFormat.TEXT, "WARNING", stream=second)
    log = logging.getLogger("ibkr_bridge.test")
    log.info("quiet")
    log.warning("password=topsecret loud")
    try:
        raise OSError("cannot reach postgresql://u:pw123@h/db")
    except OSError:
        log.exception("failed")
    assert first.getvalue() == ""
    assert "pw123" not in second.getvalue()
    assert "OSError" in second.getvalue()
    assert "WARNING" in second.getvalue()
    assert "loud" in second.getvalue()
    assert "topsecret" not in second.getvalue()
