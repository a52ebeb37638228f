"""Secrets and gateway text made safe to log: redaction of passwords and live session values.

Every log line passes through :func:`redact_secrets`, which replaces the password of any URL
with credentials, any ``password=...`` pair and every live session value a feed learned
(:func:`remember_secret`: the Client Portal ``session`` from ``/tickle``, the cookies the
gateway sets). :func:`gateway_text` is how feeds quote what a gateway said (redacted,
control characters replaced, cut to :data:`GATEWAY_TEXT_LIMIT` characters with a marker).
Pure text handling (no IO), so every layer may use it.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Final

_URL_PASSWORD: Final = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)\S*(@)")
_PASSWORD_PAIR: Final = re.compile(r"(\bpassword\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)", re.I)


#: Gateway-supplied text (an HTTP error body, an IB error message) is cut to this many
#: characters before it reaches a log line or ``api_logs``.
GATEWAY_TEXT_LIMIT: Final = 300
TRUNCATION_MARKER: Final = "...[truncated, {total} chars]"
# Shorter values would redact ordinary words; session tokens are 16+ characters.
MIN_SECRET_LENGTH: Final = 8
# Tokens rotate (every login, every night): keep the latest ones, bounded.
MAX_SECRETS: Final = 64
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\n]")


class _SecretValues:
    """The live session values learned from the gateway, replaced by ``***`` wherever seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the log handler may run on another thread
        self._values: OrderedDict[str, None] = OrderedDict()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        if len(value) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            if value in self._values:
                self._values.move_to_end(value)
                return
            self._values[value] = None
            while len(self._values) > MAX_SECRETS:
                self._values.popitem(last=False)
            # Longest first: a value that is a prefix of another (a session id cut from the
            # token) must not leave the rest of the longer one visible.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern = None

    def redact(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub("***", text)


_SECRETS: Final = _SecretValues()


def remember_secret(value: object) -> None:
    """Treat ``value`` (a session token, a cookie value) as a secret in every later log line.

    Non-strings and values shorter than :data:`MIN_SECRET_LENGTH` are ignored.
    """
    if isinstance(value, str):
        _SECRETS.add(value.strip())


def forget_secrets() -> None:
    """Drop every remembered session value (for tests)."""
    _SECRETS.clear()


def redact_secrets(text: str) -> str:
    """``text`` with URL passwords, ``password=`` values and remembered session values
    replaced by ``***``."""
    text = _SECRETS.redact(text)
    return _PASSWORD_PAIR.sub(r"\g<1>***", _URL_PASSWORD.sub(r"\g<1>***\g<2>", text))


def gateway_text(text: object, limit: int = GATEWAY_TEXT_LIMIT) -> str:
    """Text a gateway supplied, safe to log: redacted, one line, at most ``limit`` characters
    (plus a marker saying how long it was)."""
    raw = text if isinstance(text, str) else str(text)
    # Redact the whole text before cutting it: a secret across the cut must not leave its
    # first half behind. Bodies are already bounded (portal_feed.MAX_BODY_BYTES).
    clean = _CONTROL.sub("?", redact_secrets(raw))
    if len(clean) <= limit:
        return clean
    return clean[:limit] + TRUNCATION_MARKER.format(total=len(raw))
