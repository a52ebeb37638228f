"""The Client Portal simulator itself: start and stop over HTTPS, its routes, and the CLI runner."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterable
from datetime import time
from pathlib import Path

from aiohttp import web

from ibkr_bridge.core.clock import Clock
from ibkr_bridge.sim.faults import FaultStep
from ibkr_bridge.sim.portal import _api as api
from ibkr_bridge.sim.portal._api import API_PREFIX, log
from ibkr_bridge.sim.portal._market import MarketData
from ibkr_bridge.sim.portal._script import run_portal_fault_script
from ibkr_bridge.sim.portfolio import Portfolio
from ibkr_bridge.sim.tls import CertPair, generate_self_signed


class PortalSimulator(MarketData):
    """A Client Portal gateway on ``https://host:port/v1/api`` serving ``portfolio``.

    ``tls=False`` serves plain HTTP (for debugging only). ``cert`` is an existing
    certificate/key pair; else ``cert_dir`` holds (or receives) ``cert.pem``/``key.pem`` that
    survive restarts; else a self-signed pair is generated in a temporary directory at
    :meth:`start` and removed at :meth:`stop`. :attr:`ca_path` names the PEM a client must
    trust.

    Timing knobs, all in seconds of the simulator clock: ``idle_timeout`` (the brokerage
    session dies without requests, ~6 min), ``reauth_delay`` (``/iserver/reauthenticate``
    brings the session back this much later), ``slow_delay`` (how long a :meth:`slow`
    answer takes before its 503), ``walk_interval`` (move underlyings by the portfolio's
    random walk; None = prices stand still). ``nightly_reset`` is a New York wall time at
    which the session ends every day (None = only when a test says so).
    ``greek_decimals`` rounds Greeks like the gateway's short strings; None sends full
    precision so tests can recompute exactly.
    """

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """``https://host:port`` (what IBKR_GATEWAY_URL usually holds)."""
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self._port}"

    @property
    def url(self) -> str:
        """The API root, ``https://host:port/v1/api``."""
        return self.base_url + API_PREFIX

    @property
    def ca_path(self) -> str | None:
        """The certificate PEM a client passes as its CA file (None without TLS)."""
        return str(self._cert.cert_path) if self._cert is not None and self.tls else None

    async def start(self) -> None:
        if self._running:
            return
        if self.tls and self._cert is None:
            self._cert = await self._make_cert()
        ssl_context = None
        if self.tls:
            assert self._cert is not None
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(self._cert.cert_path, self._cert.key_path)
        app = web.Application(middlewares=[self._middleware])
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, ssl_context=ssl_context)
        await site.start()
        addresses = self._runner.addresses
        self._port = int(addresses[0][1])
        self._running = True
        self._closing.clear()
        now = self._clock.monotonic()
        self._started_at = now
        self._last_activity = now
        self._sso_login_at = now
        self._sso_login_wall = self._clock.now()
        self._schedule_nightly()
        if self.walk_interval is not None:
            self._tasks.spawn(self._walk_loop(self.walk_interval))
        if self._faults:
            self.run_faults(self._faults)
        log.info("Client Portal simulator listening on %s", self.url)

    async def _make_cert(self) -> CertPair:
        if self._keep_cert_dir is not None:
            kept = CertPair(self._keep_cert_dir / "cert.pem", self._keep_cert_dir / "key.pem")
            if kept.cert_path.is_file() and kept.key_path.is_file():
                return kept
            target = self._keep_cert_dir
        else:
            target = self._cert_dir = Path(tempfile.mkdtemp(prefix="ibkr-portal-sim-"))
        # openssl runs for a few dozen ms: keep the loop free meanwhile.
        return await asyncio.to_thread(generate_self_signed, target)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._closing.set()  # frozen and slow handlers give up
        await self._tasks.cancel_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = None
            self._cert = None

    async def _walk_loop(self, interval: float) -> None:
        while True:
            await self._clock.sleep(interval)
            self.portfolio.step(interval, now=self._clock.now())

    def run_faults(self, steps: Iterable[FaultStep]) -> asyncio.Task[None]:
        """Run a fault script (see :func:`parse_portal_fault_script`) on the simulator clock."""
        return self._tasks.spawn(run_portal_fault_script(self, tuple(steps), self._clock))

    # -- routes ---------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        routes = [
            ("POST", "/tickle", self._tickle, api.TICKLE),
            ("GET", "/tickle", self._tickle, None),
            ("POST", "/iserver/auth/status", self._auth, api.AUTH_STATUS),
            ("GET", "/iserver/auth/status", self._auth, None),
            ("POST", "/iserver/auth/ssodh/init", self._ssodh_init, api.SSODH_INIT),
            ("POST", "/iserver/reauthenticate", self._reauthenticate, api.REAUTHENTICATE),
            ("GET", "/iserver/reauthenticate", self._reauthenticate, None),
            ("GET", "/sso/validate", self._sso_validate, api.SSO_VALIDATE),
            ("POST", "/logout", self._logout, api.LOGOUT),
            ("GET", "/iserver/accounts", self._iserver_accounts, api.ISERVER_ACCOUNTS),
            ("GET", "/portfolio/accounts", self._portfolio_accounts, api.PORTFOLIO_ACCOUNTS),
            ("GET", "/portfolio/{acct}/positions/{page}", self._positions, api.POSITIONS),
            ("GET", "/iserver/marketdata/snapshot", self._snapshot, api.SNAPSHOT),
        ]
        names: dict[str, str] = {}
        for method, path, handler, name in routes:
            if name is not None:
                names[path] = name
            app.router.add_route(method, p + path, handler)
        self._endpoint_names = names


async def serve_portal(
    portfolio: Portfolio,
    *,
    host: str = "127.0.0.1",
    port: int = 5001,
    clock: Clock | None = None,
    tls: bool = True,
    cert: CertPair | None = None,
    cert_dir: str | Path | None = None,
    faults: Iterable[FaultStep] = (),
    walk_interval: float | None = 1.0,
    nightly_reset: time | None = None,
    nightly_needs_human: bool = False,
    on_ready: Callable[[PortalSimulator], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a simulator until cancelled (or until ``stop`` is set): the CLI's entry point.

    ``on_ready`` is called once it listens, e.g. to print :attr:`PortalSimulator.url` and
    :attr:`PortalSimulator.ca_path`.
    """
    sim = PortalSimulator(
        portfolio,
        host=host,
        port=port,
        clock=clock,
        tls=tls,
        cert=cert,
        cert_dir=cert_dir,
        faults=faults,
        walk_interval=walk_interval,
        nightly_reset=nightly_reset,
        nightly_needs_human=nightly_needs_human,
    )
    async with sim:
        if on_ready is not None:
            on_ready(sim)
        waiter = stop if stop is not None else asyncio.Event()
        await waiter.wait()
