"""The TWS simulator itself: start and stop, fault scripts, and what tests inspect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ibkr_bridge.core.clock import Clock
from ibkr_bridge.sim.faults import FaultStep, run_fault_script
from ibkr_bridge.sim.tws._faults import Faults
from ibkr_bridge.sim.tws._state import RequestRecord, log


class TwsSimulator(Faults):
    """A Gateway on ``host:port`` serving ``portfolio`` over the TWS API socket protocol.

    ``tick_interval`` is how often (simulator clock seconds) underlyings move and
    subscribed tickers get fresh prices and Greeks; ``account_interval`` how often
    account-update subscribers get their portfolio again, as a Gateway does every few
    minutes.
    """

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (the real one once started with ``port=0``)."""
        return self._port

    @property
    def clock(self) -> Clock:
        return self._clock

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self.portfolio.set_time(self._clock.now())
        self._closes = {}
        for inst in self.portfolio.instruments():
            # Underlyings without a spot have no price to close at.
            with contextlib.suppress(KeyError):
                self._closes[inst.conid] = self.portfolio.price(inst.conid)
        self._unsubscribe = self.portfolio.subscribe(self._on_position_change)
        await self._listen()
        self._tasks.spawn(self._stream_loop())
        if self._faults:
            self.run_faults(self._faults)
        log.info("TWS simulator listening on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._close_listener()
        await self._tasks.cancel_all()
        handlers = []
        for conn in list(self._conns.values()):
            # abort, not close: a client that stopped reading must not keep us waiting.
            conn.writer.transport.abort()
            if conn.task is not None:
                handlers.append(conn.task)
        self._thawed.set()  # let handlers parked by a freeze see their socket is gone
        if handlers:
            # Handlers end on their own once the read fails; cancelling them instead
            # makes asyncio's stream callback log a spurious CancelledError.
            _, pending = await asyncio.wait(handlers, timeout=2.0)
            for task in pending:
                task.cancel()
        self._conns.clear()

    def run_faults(self, steps: Iterable[FaultStep]) -> asyncio.Task[None]:
        """Run a fault script on the simulator clock, starting now."""
        return self._tasks.spawn(run_fault_script(self, tuple(steps), self._clock))

    # -- introspection --------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def subscriptions(self) -> Mapping[int, int]:
        """Active streaming market data, reqId → conid, over all sessions."""
        merged: dict[int, int] = {}
        for conn in self._conns.values():
            merged.update(conn.subs)
        return MappingProxyType(merged)

    def subscriptions_of(self, client_id: int) -> Mapping[int, int]:
        for conn in self._conns.values():
            if conn.started and conn.client_id == client_id:
                return MappingProxyType(dict(conn.subs))
        return MappingProxyType({})

    def server_version_of(self, client_id: int) -> int | None:
        for conn in self._conns.values():
            if conn.started and conn.client_id == client_id:
                return conn.version
        return None

    @property
    def requests(self) -> tuple[RequestRecord, ...]:
        """Every request received (most recent ``request_log_size``), in order."""
        return tuple(self._requests)

    @property
    def request_ids(self) -> list[int]:
        """The message ids of :attr:`requests`, e.g. to assert 58 was never sent."""
        return [r.msg_id for r in self._requests]

    def count_requests(self, msg_id: int, client_id: int | None = None) -> int:
        return sum(
            1
            for r in self._requests
            if r.msg_id == msg_id and (client_id is None or r.client_id == client_id)
        )

    async def wait_for_request(self, msg_id: int, count: int = 1) -> RequestRecord:
        """Wait until ``count`` requests with ``msg_id`` have arrived (wrap in a timeout)."""
        while True:
            matches = [r for r in self._requests if r.msg_id == msg_id]
            if len(matches) >= count:
                return matches[count - 1]
            self._request_signal.clear()
            await self._request_signal.wait()

    @property
    def refusing(self) -> bool:
        return self._refusing

    @property
    def in_outage(self) -> bool:
        return self._outage

    @property
    def sentinel_mode(self) -> str | None:
        return self._sentinel
