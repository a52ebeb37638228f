"""The faults a TWS simulator can show, as methods a test or a fault script calls.

Restarts, resets (1100/1101/1102, 1300), refused connections, a hung Gateway, garbage and
huge frames on the socket, Greek sentinels, withheld Greeks, farm notices and position
changes. A fault given ``seconds`` ends by itself unless a newer one of its kind came first.
"""

from __future__ import annotations

import contextlib
import struct

from ibkr_bridge.sim.faults import (
    HUGE_FRAME_CHUNK,
    HUGE_FRAME_SIZE,
    MAX_DECLARED_FRAME,
    RESET_KINDS,
    SENTINEL_MODES,
    PortfolioFaults,
)
from ibkr_bridge.sim.tws import _codec as wire
from ibkr_bridge.sim.tws._market import MODEL_GREEKS
from ibkr_bridge.sim.tws._session import Sessions
from ibkr_bridge.sim.tws._state import (
    DEFAULT_FARM,
    FARM_BROKEN,
    FARM_MESSAGES,
    FARM_OK,
    LOST,
    RESTORED,
    log,
)


class Faults(Sessions, PortfolioFaults):
    """Fault injection on top of the sessions (see :mod:`ibkr_bridge.sim.faults`).

    Position and spot changes come from :class:`PortfolioFaults`: the portfolio's
    subscription pushes them to subscribed sessions.
    """

    async def restart(self, downtime: float = 0.0, stale_ids: float = 0.0) -> None:
        """Gateway restart: every API socket closes; refuse connects for ``downtime`` s.

        With ``stale_ids`` the old sessions' client ids stay taken for that long (from
        now), so a quick reconnect gets error 326 as from a Gateway that has not yet
        noticed the old session is gone.
        """
        log.info("fault: restart (downtime %.1fs, stale ids %.1fs)", downtime, stale_ids)
        if downtime > 0:
            await self.refuse(downtime)
        until = self._clock.monotonic() + stale_ids
        for conn in list(self._conns.values()):
            if conn.started and conn.client_id is not None and stale_ids > 0:
                self._stale_ids[conn.client_id] = until
            # Forget the session now, so client_ids is exact once restart() returns.
            conn.started = False
            conn.close()

    async def port_reset(self) -> None:
        """Error 1300 (API port reset) to every session, then its socket closes."""
        log.info("fault: port reset (1300)")
        text = (
            "TWS socket port has been reset and this connection is being dropped. "
            f"Please reconnect on the new port - {self._port}"
        )
        for conn in list(self._conns.values()):
            if conn.started:
                self._send_error(conn, -1, 1300, text)
            conn.started = False
            conn.close()

    async def daily_reset(self, kind: str = "1101", outage: float = 30.0) -> None:
        """IBKR server reset: 1100 and broken farms now, 1101 or 1102 after ``outage`` s.

        Sockets stay up; streaming stops during the outage. With 1101 every market data
        subscription is dropped and the client has to subscribe again.
        """
        if kind not in RESET_KINDS:
            raise ValueError(f"kind must be one of {RESET_KINDS}, got {kind!r}")
        log.info("fault: daily reset (%s after %.1fs)", kind, outage)
        self._new_generation("outage")
        self._outage = True
        for conn in self._started():
            self._send_error(conn, -1, *LOST)
            for code, text in FARM_BROKEN:
                self._send_error(conn, -1, code, text)
        self._end_after(outage, "outage", lambda: self._end_outage(kind))

    def _end_outage(self, kind: str) -> None:
        self._outage = False
        for conn in self._started():
            if kind == "1101":
                conn.subs.clear()
            self._send_error(conn, -1, int(kind), RESTORED[kind])
            for code, text in FARM_OK:
                self._send_error(conn, -1, code, text)

    async def refuse(self, seconds: float | None = None) -> None:
        """Refuse new connections (listener closed) for ``seconds``, or until accepted."""
        log.info("fault: refuse connections (%s s)", seconds)
        self._new_generation("refuse")
        self._refusing = True
        self._close_listener()
        if seconds is not None:
            self._end_after(seconds, "refuse", self.accept_connections)

    async def accept_connections(self) -> None:
        """End :meth:`refuse`: listen again on the same port."""
        self._new_generation("refuse")
        self._refusing = False
        if self._server is None and self._running:
            await self._listen()

    async def freeze(self, seconds: float | None = None) -> None:
        """A hung Gateway: bytes are accepted, nothing is answered or streamed.

        Requests are kept and answered when the freeze ends (after ``seconds``, or on
        :meth:`unfreeze`).
        """
        log.info("fault: freeze (%s s)", seconds)
        self._new_generation("freeze")
        self._thawed.clear()
        if seconds is not None:
            self._end_after(seconds, "freeze", self.unfreeze)

    async def unfreeze(self) -> None:
        self._new_generation("freeze")
        self._thawed.set()
        for conn in list(self._conns.values()):
            held, conn.held = conn.held, []
            for data in held:
                self._write(conn, data)

    async def garbage(self, nbytes: int = 64, framed: bool = True, count: int = 1) -> None:
        """Send ``count`` bursts of ``nbytes`` random bytes to every session, each inside a
        frame or raw.

        A raw burst corrupts the client's framing for the rest of the session; many framed
        ones are a flood the client must survive (the simulator waits for each session's
        socket to drain between batches, so its own buffers stay small).
        """
        log.info("fault: garbage (%d x %d bytes, framed=%s)", count, nbytes, framed)
        for i in range(count):
            for conn in list(self._conns.values()):
                junk = self._rng.randbytes(nbytes)
                self._write(conn, wire.frame(junk) if framed else junk)
            if i % 64 == 63:
                await self._drain()

    async def huge_frame(
        self, size: int = HUGE_FRAME_SIZE, nbytes: int | None = None, chunk: int = HUGE_FRAME_CHUNK
    ) -> int:
        """Announce one frame of ``size`` bytes to every session, then stream ``nbytes``
        filler bytes of it (default: all of them), ``chunk`` at a time with the socket
        drained in between: a hostile or broken Gateway a client must not buffer for.

        Stops early once every such session is closed. Returns the most filler bytes any
        session was sent.
        """
        if not 0 <= size <= MAX_DECLARED_FRAME:
            raise ValueError(f"size must be 0..{MAX_DECLARED_FRAME}, got {size}")
        total = size if nbytes is None else nbytes
        if total < 0 or chunk <= 0:
            raise ValueError(f"nbytes must be >= 0 and chunk > 0, got {nbytes}, {chunk}")
        log.info("fault: huge frame (%d bytes announced, %d streamed)", size, total)
        conns = [c for c in self._conns.values() if not c.closing]
        header = struct.pack(">I", size)
        for conn in conns:
            self._write(conn, header)
        filler = b"\x7f" * min(chunk, total)
        sent = 0
        while sent < total:
            await self._wait_thawed()  # a frozen Gateway would only pile the filler up
            live = [c for c in conns if not c.closing]
            if not live:
                break
            piece = filler[: total - sent]
            for conn in live:
                self._write(conn, piece)
            sent += len(piece)
            for conn in live:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn.writer.drain()
        return sent

    async def error_message(self, code: int, text: str, req_id: int = -1) -> None:
        """An IB error message ``code`` with ``text`` (any length, any content) to every
        started session: what a client quotes from the Gateway must be bounded."""
        log.info("fault: error message %d (%d chars)", code, len(text))
        for conn in self._started():
            self._send_error(conn, req_id, code, text)

    async def _drain(self) -> None:
        for conn in list(self._conns.values()):
            if not conn.closing and self._thawed.is_set():
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn.writer.drain()

    async def sentinel_greeks(self, mode: str, seconds: float | None = None) -> None:
        """Greeks arrive as IBKR's sentinels for ``seconds`` (or until cleared).

        ``minus2``: IBKR's "not computed" values (delta/gamma/vega/theta -2, the others -1);
        ``vega_theta``: real delta, gamma and prices but vega and theta -2;
        ``dblmax``: 1.7976931348623157E308; ``nan``: NaN; ``missing``: no
        tickOptionComputation at all.
        """
        if mode not in SENTINEL_MODES:
            raise ValueError(f"mode must be one of {SENTINEL_MODES}, got {mode!r}")
        log.info("fault: sentinel greeks %s (%s s)", mode, seconds)
        self._new_generation("sentinel")
        self._sentinel = mode
        if seconds is not None:
            self._end_after(seconds, "sentinel", self.clear_sentinel_greeks)

    def clear_sentinel_greeks(self) -> None:
        self._new_generation("sentinel")
        self._sentinel = None

    async def withhold_greeks(self, conid: int, seconds: float | None = None) -> None:
        """Send no tickOptionComputation for ``conid`` for ``seconds`` (or until resumed).

        Prices keep streaming and no 1100 is sent: what an option the login has no
        permission for, an illiquid one, or a silently dead model stream looks like.
        """
        self.portfolio.instrument(conid)  # KeyError for an unknown conid, now
        log.info("fault: withhold greeks of %d (%s s)", conid, seconds)
        gen = self._withheld[conid] = self._new_generation("withhold")
        if seconds is not None:
            # Ends only this conid's withholding, and only if not withheld again since.
            self._tasks.spawn_after(
                self._clock,
                seconds,
                lambda: self._withheld.get(conid) == gen,
                lambda: self.resume_greeks(conid),
            )

    def resume_greeks(self, conid: int) -> None:
        """End :meth:`withhold_greeks`: current Greeks go out to every subscriber at once."""
        if self._withheld.pop(conid, None) is None:
            return
        now = self._clock.now()
        inst = self.portfolio.instrument(conid)
        for conn in self._started():
            for req_id, sub_conid in list(conn.subs.items()):
                if sub_conid == conid and not self._outage:
                    delayed = 1 if conn.md_type in (3, 4) else 0
                    self._send_greeks(conn, req_id, inst, now, MODEL_GREEKS[delayed])

    @property
    def withheld_greeks(self) -> frozenset[int]:
        return frozenset(self._withheld)

    def fixed_quote(self, conid: int, bid: float, ask: float, last: float) -> None:
        """Send ``conid``'s bid, ask and last ticks as these numbers until
        :meth:`clear_fixed_quote`: a crossed, zero or -1 ("no price") quote, or an option
        quoted below its intrinsic value, as an illiquid option outside market hours shows.
        Subscribers get it with the next ticks (a new subscription gets it at once)."""
        self.portfolio.instrument(conid)  # KeyError for an unknown conid, now
        log.info("fault: fixed quote of %d: %s / %s, last %s", conid, bid, ask, last)
        self._fixed_quotes[conid] = (float(bid), float(ask), float(last))

    def clear_fixed_quote(self, conid: int) -> None:
        """End :meth:`fixed_quote`: the model's prices again from the next ticks."""
        self._fixed_quotes.pop(conid, None)

    async def farm_notice(self, code: int, farm: str | None = None) -> None:
        """Send IB's data-farm notice ``code`` (2103..2108, 2157, 2158) to every session.

        No 1100 comes with it; ``farm`` defaults to the farm a Gateway would name
        (``usfarm`` for market data).
        """
        if code not in FARM_MESSAGES:
            raise ValueError(f"code must be one of {sorted(FARM_MESSAGES)}, got {code!r}")
        name = farm or DEFAULT_FARM.get(code, "usfarm")
        log.info("fault: farm notice %d (%s)", code, name)
        for conn in self._started():
            self._send_error(conn, -1, code, FARM_MESSAGES[code].format(farm=name))
