"""The request gate: every request passes it before its endpoint runs.

The aiohttp middleware records and counts each request, then answers for the gateway
where a fault, the rate limits, the penalty box, a missing ``Content-Length`` or an
expired SSO session decide the answer instead of the endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from ibkr_bridge.sim.portal._api import (
    API_PREFIX,
    OTHER,
    PORTFOLIO_ACCOUNTS,
    POSITIONS,
    SESSION_COOKIE,
    SNAPSHOT,
    Handler,
    RequestRecord,
    error,
)
from ibkr_bridge.sim.portal._faults import Faults

_CHUNK: Final = 64 * 1024


class Gate(Faults):
    """Middleware, pre-endpoint answers and the fault bodies (huge, garbage)."""

    # Route path -> endpoint name, filled in when the routes are added.
    _endpoint_names: dict[str, str]

    def _endpoint_of(self, request: web.Request) -> str:
        info = request.match_info.route.resource
        canonical = info.canonical if info is not None else ""
        return self._endpoint_names.get(canonical.removeprefix(API_PREFIX), OTHER)

    def _record(self, request: web.Request, endpoint: str, status: int | None) -> None:
        self._requests.append(
            RequestRecord(
                at=self._clock.monotonic(),
                wall=self._clock.now(),
                method=request.method,
                path=request.path_qs,
                endpoint=endpoint,
                status=status,
            )
        )

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = self._endpoint_of(request)
        self.counts[endpoint] += 1
        self.in_flight += 1
        try:
            response = await self._process(request, handler, endpoint)
        finally:
            self.in_flight -= 1
        return response

    async def _process(
        self, request: web.Request, handler: Handler, endpoint: str
    ) -> web.StreamResponse:
        self._advance_time()
        now = self._clock.monotonic()
        if self._active("freeze"):
            self._record(request, endpoint, None)
            self.frozen += 1
            try:
                await self._closing.wait()
            finally:
                self.frozen -= 1
            raise web.HTTPServiceUnavailable()
        refused = await self._gate(request, endpoint, now)
        response = refused if refused is not None else await handler(request)
        self._record(request, endpoint, response.status)
        return response

    async def _gate(
        self, request: web.Request, endpoint: str, now: float
    ) -> web.StreamResponse | None:
        """The answer given before the endpoint itself runs, if any."""
        if self._active("storm"):
            return error(429, "Too many requests")
        if now < self._penalty_until:
            return error(429, "Too many requests (penalty box)")
        if self._rate_limited(endpoint, now):
            return error(429, "Too many requests")
        if (
            request.method == "POST"
            and request.content_length is None
            and "Transfer-Encoding" not in request.headers
        ):
            # The real gateway refuses an empty POST without Content-Length.
            return web.Response(status=411, text="Length Required")
        if self._active("slow"):
            self.sleeping += 1
            try:
                await self._wait_closing(self.slow_delay)
            finally:
                self.sleeping -= 1
            return error(503, "Service Unavailable: the request took too long")
        if self._active("garbage"):
            return self._garbage_response(endpoint)
        if not self._sso_valid:
            return error(401, "not authenticated")
        self._last_activity = now
        if self._active("echo") and endpoint in self._echo_endpoints:
            token, cookie = self.session_secrets
            return error(
                self._echo_status,
                f"internal error handling {request.path} for session {token} "
                f"(cookie {SESSION_COOKIE}={cookie})",
            )
        if self._active("huge") and endpoint in self._huge_endpoints:
            return await self._stream_huge(request)
        return None

    async def _stream_huge(self, request: web.Request) -> web.StreamResponse:
        """``[0,0,...,0]`` padded to exactly ``nbytes``: valid JSON, so a client that reads it
        whole also builds a list of millions of items."""
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        nbytes = self._huge_bytes
        if self._huge_chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = nbytes
        items, pad = divmod(max(0, nbytes - 1), 2)  # "[" + pad + "0," * (items - 1) + "0]"
        try:
            await response.prepare(request)
            if nbytes < 3:
                await response.write(b" " * nbytes)
            else:
                await response.write(b"[" + b" " * pad)
                left = items - 1
                per_chunk = _CHUNK // 2
                while left > 0:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        return response  # the client refused the rest: stop sending it
                    count = min(left, per_chunk)
                    await response.write(b"0," * count)
                    left -= count
                await response.write(b"0]")
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up after refusing the body: what it should do
        return response

    async def _wait_closing(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({sleeper, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closing.cancel()

    def _garbage_response(self, endpoint: str) -> web.Response:
        self._garbage_seq += 1
        listy = endpoint in (PORTFOLIO_ACCOUNTS, POSITIONS, SNAPSHOT)
        variants: list[tuple[str, str]] = [
            ("text/html", "<html><body><h1>Gateway busy</h1></body></html>"),
            ("application/json", '{"conid": 12345, "31": "1.2'),
            ("application/json", '{"unexpected": [1, 2, 3]}' if listy else '[{"unexpected": 1}]'),
            ("application/json", '[1, "two", null, {"conid": "x"}]' if listy else '"ok"'),
            ("text/plain", ""),
        ]
        content_type, body = variants[(self._garbage_seq - 1) % len(variants)]
        return web.Response(status=200, text=body, content_type=content_type)

    def _need_brokerage(self) -> web.Response | None:
        if not self._authenticated:
            return error(401, "not authenticated")
        return None
