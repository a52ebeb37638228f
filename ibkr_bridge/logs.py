"""Service logging: readable text by default, JSON lines with ``BRIDGE_LOG_FORMAT=json``.

Secrets never reach a log line: every message passes through :func:`redact_secrets`,
which replaces the password of any URL with credentials and any ``password=...`` pair.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from .config import LogFormat

_URL_PASSWORD: Final = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)\S*(@)")
_PASSWORD_PAIR: Final = re.compile(r"(\bpassword\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)", re.I)


def redact_secrets(text: str) -> str:
    """``text`` with URL passwords and ``password=`` values replaced by ``***``."""
    return _PASSWORD_PAIR.sub(r"\g<1>***", _URL_PASSWORD.sub(r"\g<1>***\g<2>", text))


_RESERVED: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
_CACHED: Final = frozenset({"message", "asctime"})


class RedactingFilter(logging.Filter):
    """Replaces DSN passwords in the formatted message (and drops the raw args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
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
