"""Service logging: readable text by default, JSON lines with ``BRIDGE_LOG_FORMAT=json``.

Secrets never reach a log line: every message passes through :func:`redact_secrets`,
which replaces the password of any URL with credentials, any ``password=...`` pair and every
live session value a feed learned (:func:`remember_secret`: the Client Portal ``session``
from ``/tickle``, the cookies the gateway sets).

Nothing a gateway says is trusted into a log verbatim: :func:`gateway_text` is how feeds
quote an HTTP error body or an IB error message (redacted, control characters replaced,
cut to :data:`GATEWAY_TEXT_LIMIT` characters with a marker). Records of ib_async's own
loggers, which quote whole wire messages, get the same treatment in the handler.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from ibkr_bridge.config import LogFormat
from ibkr_bridge.core.redaction import (
    GATEWAY_TEXT_LIMIT,
    MAX_SECRETS,
    MIN_SECRET_LENGTH,
    TRUNCATION_MARKER,
    forget_secrets,
    gateway_text,
    redact_secrets,
    remember_secret,
)

# The redaction names are re-exported: logging is where callers look for them.
__all__ = [
    "GATEWAY_LOG_BURST",
    "GATEWAY_LOG_WINDOW",
    "GATEWAY_TEXT_LIMIT",
    "MAX_SECRETS",
    "MIN_SECRET_LENGTH",
    "TRUNCATION_MARKER",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "configure_logging",
    "forget_secrets",
    "gateway_text",
    "redact_secrets",
    "remember_secret",
]

_RESERVED: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
_CACHED: Final = frozenset({"message", "asctime"})


# Loggers whose messages quote whatever the gateway sent (ib_async logs whole wire messages,
# e.g. "Error handling fields: [...]" for every garbage frame).
_GATEWAY_LOGGERS: Final = ("ib_async",)
#: At most this many records of one gateway library logger per window: a flood of garbage
#: frames is a handful of lines and a count, not one line per frame.
GATEWAY_LOG_BURST: Final = 20
GATEWAY_LOG_WINDOW: Final = 60.0


class RedactingFilter(logging.Filter):
    """Replaces secrets in the formatted message (and drops the raw args); records of the
    gateway client libraries are also cut like :func:`gateway_text` and limited to
    :data:`GATEWAY_LOG_BURST` per :data:`GATEWAY_LOG_WINDOW` seconds per logger (the next
    line after a quiet spell says how many were suppressed)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._monotonic = monotonic
        self._windows: dict[str, tuple[float, int, int]] = {}  # name -> (start, shown, dropped)

    def _admit(self, name: str) -> tuple[bool, int]:
        """Whether a gateway record may be shown, and how many were dropped before it."""
        now = self._monotonic()
        start, shown, dropped = self._windows.get(name, (now, 0, 0))
        if now - start >= GATEWAY_LOG_WINDOW:
            start, shown = now, 0
        if shown >= GATEWAY_LOG_BURST:
            self._windows[name] = (start, shown, dropped + 1)
            return False, 0
        self._windows[name] = (start, shown + 1, 0)
        return True, dropped

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name.partition(".")[0] in _GATEWAY_LOGGERS:
            admitted, dropped = self._admit(record.name)
            if not admitted:
                return False
            cleaned = gateway_text(message)
            if dropped:
                cleaned += f" ({dropped} similar lines suppressed)"
            if record.exc_info and record.exc_info[1] is not None:
                # The traceback's last line repeats the garbage (e.g. a ValueError quoting
                # the field): keep the exception's type and a cut message, not the text.
                exc = record.exc_info[1]
                cleaned += f" ({type(exc).__name__}: {gateway_text(exc, 120)})"
                record.exc_info, record.exc_text = None, None
        else:
            cleaned = redact_secrets(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class TextFormatter(logging.Formatter):
    """The readable format; the whole line (traceback included) passes the redaction."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            key: value
            for key, value in vars(record).items()
            # "message"/"asctime" may be cached there by another handler's formatter, from
            # before our filter redacted the record: never copy them.
            if key not in _RESERVED and key not in _CACHED and not key.startswith("_")
        }
        entry.update(
            time=datetime.fromtimestamp(record.created, UTC).isoformat(),
            level=record.levelname.lower(),
            logger=record.name,
            message=record.getMessage(),
        )
        if record.exc_info:
            entry["exception"] = redact_secrets(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_logging(
    fmt: LogFormat = LogFormat.TEXT, level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Install one handler on the root logger (replacing any earlier one of ours)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.set_name("ibkr-bridge")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "ibkr-bridge"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # ib_async logs every wire message at DEBUG and each error at ERROR; the bridge reports
    # what matters in api_logs, so keep the library's own chatter to warnings.
    logging.getLogger("ib_async").setLevel(max(logging.WARNING, root.level))
    # Its wrapper logs every IB error code at ERROR; the bridge logs them itself, classified.
    logging.getLogger("ib_async.wrapper").setLevel(logging.CRITICAL)
