"""The PORTAL feed's HTTP client: one rate-limited, size-capped, clock-timed request at a time.

:class:`_PortalHttp` is the lowest layer of :class:`~ibkr_bridge.feeds.portal.feed.PortalFeed`
(the layers above add session keeping, positions and market data). Every request passes the
:class:`~ibkr_bridge.feeds.ratelimit.RateLimiter`; a 429 pauses its endpoint. A body larger
than :data:`MAX_BODY_BYTES` is refused unread (by ``Content-Length``, else while it streams
in), and the session values an answer hands out are remembered as secrets to redact.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Mapping
from typing import Any, Final, TypeVar

import aiohttp

from ibkr_bridge.core.clock import Clock
from ibkr_bridge.core.errors import GatewayError
from ibkr_bridge.core.records import Status
from ibkr_bridge.core.redaction import gateway_text, remember_secret
from ibkr_bridge.feeds.portal._wire import _describe, _learn_secrets, _Reply
from ibkr_bridge.feeds.protocol import FeedListener
from ibkr_bridge.feeds.ratelimit import RateLimiter

log = logging.getLogger(__name__)

#: The largest answer read from the gateway. Real answers are a few hundred KiB at most
#: (100 positions a page, 50 conids a snapshot); anything bigger is refused unread so a
#: hostile or broken gateway cannot make the bridge hold it (a 50 MB body, a gzip bomb).
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
_READ_CHUNK: Final = 64 * 1024

_T = TypeVar("_T")


async def _read_capped(response: aiohttp.ClientResponse) -> bytes | None:
    """The body, or None (the rest unread) once it grows past :data:`MAX_BODY_BYTES`."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class _PortalHttp:
    """Requests to the gateway and the throttled events about them (state set by PortalFeed)."""

    gateway_url: str
    ca_path: str | None
    verify_tls: bool
    request_timeout: float
    event_interval: float
    _clock: Clock
    _limiter: RateLimiter
    _listener: FeedListener
    _session: aiohttp.ClientSession | None
    _in_flight: int
    _last_answer: float
    _reported: dict[str, float]
    _suppressed: dict[str, int]

    def _new_session(self) -> aiohttp.ClientSession:
        ssl_option: ssl.SSLContext | bool
        if not self.verify_tls:
            ssl_option = False
        else:
            try:
                ssl_option = ssl.create_default_context(cafile=self.ca_path)
            except (OSError, ssl.SSLError) as exc:
                raise GatewayError(
                    f"cannot load the gateway CA file {self.ca_path!r}: {_describe(exc)}"
                ) from exc
        connector = aiohttp.TCPConnector(ssl=ssl_option, limit=4)
        # aiohttp's own timeout is a backstop; the clock-driven one below is the rule.
        timeout = aiohttp.ClientTimeout(total=self.request_timeout + 5.0)
        return aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def _within_timeout(self, work: Awaitable[_T]) -> _T:
        """``work``, or TimeoutError after ``request_timeout`` seconds of the feed's clock."""
        task = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self._clock.sleep(self.request_timeout))
        try:
            done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
        if task in done:
            return task.result()
        await asyncio.gather(task, return_exceptions=True)
        raise TimeoutError(f"no answer within {self.request_timeout:g} s")

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
    ) -> _Reply:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = dict(body)
        elif method == "POST":
            kwargs["data"] = b""  # Content-Length: 0; the gateway refuses a POST without it
        async with session.request(
            method, self.gateway_url + path, params=params, **kwargs
        ) as response:
            status = response.status
            for morsel in response.cookies.values():
                remember_secret(morsel.value)
            declared = response.content_length
            raw: bytes | None = None
            if declared is None or declared <= MAX_BODY_BYTES:
                raw = await _read_capped(response)
            if raw is None:
                response.close()  # drop the connection rather than read the rest
                size = f"{declared} bytes" if declared is not None else "a streamed body"
                why = f"{size}, over the {MAX_BODY_BYTES} byte limit: refused unread"
                return _Reply(status, None, why, oversized=True)
        if not raw:
            return _Reply(status, None, "empty body")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            preview = gateway_text(raw[:60].decode("utf-8", errors="replace"))
            return _Reply(status, None, f"not JSON: {preview!r}")
        _learn_secrets(data)
        return _Reply(status, data)

    async def _call(
        self,
        method: str,
        endpoint: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> _Reply:
        """One rate-limited request; raises GatewayError/TimeoutError when nothing came back."""
        session = self._session
        if session is None:
            raise GatewayError("not connected to the gateway")
        await self._limiter.acquire(endpoint)
        self._in_flight += 1
        try:
            reply = await self._within_timeout(self._send(session, method, path, params, body))
        except TimeoutError:
            raise  # an OSError subclass, but it means "no answer", not "unreachable"
        except aiohttp.ClientConnectorCertificateError as exc:
            raise GatewayError(
                f"the gateway's TLS certificate is not trusted ({_describe(exc)}): give its "
                "certificate PEM as the CA file (IBKR_GATEWAY_CA)"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise GatewayError(f"{method} {path} failed: {_describe(exc)}") from exc
        finally:
            self._in_flight -= 1
        self._last_answer = self._clock.monotonic()
        if reply.oversized:
            self._report(
                "oversized_answer",
                f"{endpoint} answered HTTP {reply.status} with {reply.garbage}",
                key=f"oversized:{endpoint}",
                detail={"endpoint": endpoint, "status": reply.status, "limit": MAX_BODY_BYTES},
            )
        if reply.status == 429:
            pause = self._limiter.penalize(endpoint)
            self._report(
                "rate_limited",
                f"the gateway answered 429 to {endpoint}; pausing it for {pause:g} s",
                key=f"rate_limited:{endpoint}",
                detail={"endpoint": endpoint, "pause": pause},
            )
        elif reply.status < 400:
            self._limiter.succeeded(endpoint)
        return reply

    def _report(
        self,
        event: str,
        message: str,
        *,
        status: Status = "warning",
        detail: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> None:
        """A ``feed_event``, at most once per ``event_interval`` for the same ``key``."""
        key = key or event
        now = self._clock.monotonic()
        last = self._reported.get(key)
        if last is not None and now - last < self.event_interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._reported[key] = now
        full = dict(detail or {})
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            full["repeated"] = suppressed
        log.log(logging.WARNING if status != "info" else logging.INFO, "%s: %s", event, message)
        self._listener.feed_event(event, message, status=status, detail=full)

    def _garbage(self, endpoint: str, reply: _Reply, what: str) -> None:
        self._report(
            "garbage",
            f"unexpected answer from {endpoint} ({what}); skipped",
            key=f"garbage:{endpoint}",
            detail={"endpoint": endpoint, "status": reply.status, "why": reply.garbage or what},
        )
