"""A Client Portal Web API gateway simulator over HTTPS (aiohttp).

:class:`PortalSimulator` serves the endpoints a portfolio-Greeks client needs under
``/v1/api`` with the shapes of IBKR's "IB REST API 2.29.0" (see
``/work/shared/reference/client-portal.md``): ``/tickle``, ``/iserver/auth/status``,
``/iserver/auth/ssodh/init``, ``/iserver/reauthenticate``, ``/sso/validate``, ``/logout``,
``/iserver/accounts``, ``/portfolio/accounts``, ``/portfolio/{acct}/positions/{page}`` and
``/iserver/marketdata/snapshot``. Positions, prices and Black-Scholes Greeks come from the
shared :class:`~ibkr_bridge.sim.portfolio.Portfolio`, valued at the simulator clock's time.

The gateway's habits are reproduced: a self-signed certificate; snapshot values as strings
(``"1,300"``, ``"10.2K"``, a ``C`` prefix on the last price outside regular hours); the
snapshot pre-flight (the first call per conid returns no fields); ``/iserver/accounts``
before snapshots and ``/portfolio/accounts`` before other ``/portfolio`` calls; rate limits
answered with 429 and a penalty box for repeat offenders; a brokerage session that times
out when idle and ends every night; ``competing`` when another login takes the session.

Faults (methods, or a JSON fault script in the format of :mod:`ibkr_bridge.sim.faults`
with the names in :data:`PORTAL_FAULTS`) run on the injectable clock, so tests drive them
with a FakeClock. Every request is recorded (:attr:`PortalSimulator.requests`) so a test can
prove a client never exceeded a limit and never hammered the gateway while waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import shutil
import ssl
import tempfile
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, time, timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

from aiohttp import web
from attrs import field, frozen

from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.sim._tasks import BackgroundTasks
from ibkr_bridge.sim.faults import (
    PORTFOLIO_FAULTS,
    FaultScriptError,
    FaultStep,
    load_steps,
    parse_steps,
    validate_step,
)
from ibkr_bridge.sim.portfolio import NEW_YORK, Instrument, Portfolio, Position
from ibkr_bridge.sim.tls import CertPair, generate_self_signed

log = logging.getLogger(__name__)

API_PREFIX: Final = "/v1/api"

# Endpoint names used in request counts, limits and by the client's rate limiter.
TICKLE: Final = "tickle"
AUTH_STATUS: Final = "auth_status"
SSODH_INIT: Final = "ssodh_init"
REAUTHENTICATE: Final = "reauthenticate"
SSO_VALIDATE: Final = "sso_validate"
LOGOUT: Final = "logout"
ISERVER_ACCOUNTS: Final = "iserver_accounts"
PORTFOLIO_ACCOUNTS: Final = "portfolio_accounts"
POSITIONS: Final = "positions"
SNAPSHOT: Final = "snapshot"
OTHER: Final = "other"

PAGE_SIZE: Final = 100
GREEK_FIELDS: Final = ("7308", "7309", "7310", "7311")
GREEK_FIELD_OF: Final = MappingProxyType(
    {"delta": "7308", "gamma": "7309", "theta": "7310", "vega": "7311"}
)
#: The cookie the simulated gateway sets on its session answers (a session secret).
SESSION_COOKIE: Final = "x-sess-uuid"
_CHUNK: Final = 64 * 1024
SENTINEL_MODES: Final = ("missing", "empty", "minus2", "na")
_SENTINEL_TEXT: Final = {"empty": "", "minus2": "-2", "na": "N/A"}
_MONTHS: Final = (
    "JAN",
    "FEB",
    "MAR",
    "APR",
    "MAY",
    "JUN",
    "JUL",
    "AUG",
    "SEP",
    "OCT",
    "NOV",
    "DEC",
)
_SERVER_INFO: Final = MappingProxyType(
    {"serverName": "SimGw1", "serverVersion": "Build 10.30.1, simulated (ibkr-bridge)"}
)
_RTH: Final = (time(9, 30), time(16, 0))


@frozen
class SimLimits:
    """The gateway's rate limits: ``(requests, per seconds)`` sliding windows.

    ``penalty_after`` rate-limit violations within ``penalty_window`` seconds put the
    client in the penalty box for ``penalty_seconds`` (everything answers 429).
    """

    global_limit: tuple[int, float] = (10, 1.0)
    endpoints: Mapping[str, tuple[int, float]] = field(
        factory=lambda: MappingProxyType(
            {
                SNAPSHOT: (10, 1.0),
                TICKLE: (1, 1.0),
                PORTFOLIO_ACCOUNTS: (1, 5.0),
                SSO_VALIDATE: (1, 60.0),
            }
        )
    )
    penalty_after: int = 5
    penalty_window: float = 60.0
    penalty_seconds: float = 600.0


@frozen
class RequestRecord:
    """One request the simulator received. ``status`` is None for a frozen (unanswered) one."""

    at: float  # simulator clock, monotonic
    wall: datetime
    method: str
    path: str
    endpoint: str
    status: int | None


def _fmt_plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_price(value: float) -> str:
    """A price the way the gateway writes it: two decimals, thousands grouped (``"6,012.25"``)."""
    return f"{value:,.2f}"


def format_size(value: float) -> str:
    """Sizes and volumes: ``"950"``, ``"1,300"``, ``"10.2K"``, ``"3.4M"``, as IBKR shortens them."""
    n = abs(value)
    sign = "-" if value < 0 else ""
    if n < 10_000:
        return f"{sign}{n:,.0f}"
    if n < 1_000_000:
        return f"{sign}{n / 1_000:.1f}K"
    if n < 1_000_000_000:
        return f"{sign}{n / 1_000_000:.1f}M"
    return f"{sign}{n / 1_000_000_000:.1f}B"


def _contract_desc(inst: Instrument) -> str:
    if inst.expiry is None:
        return inst.symbol
    month = _MONTHS[int(inst.expiry[4:6]) - 1]
    if inst.sec_type == "FUT":
        return f"{inst.symbol} {month}{inst.expiry[2:4]}"
    assert inst.strike is not None
    return (
        f"{inst.symbol}    {month}{inst.expiry[:4]} {_fmt_plain(inst.strike)} {inst.right} "
        f"[{inst.local_symbol} {_fmt_plain(inst.multiplier)}]"
    )


def _is_regular_hours(when: datetime) -> bool:
    local = when.astimezone(NEW_YORK)
    return local.weekday() < 5 and _RTH[0] <= local.time() < _RTH[1]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "statusCode": status}, status=status)


# The endpoints a data fault hits by default: everything but the session's own.
_DATA_ENDPOINTS: Final = frozenset(
    {ISERVER_ACCOUNTS, PORTFOLIO_ACCOUNTS, POSITIONS, SNAPSHOT, SSO_VALIDATE}
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PortalSimulator:
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

    def __init__(
        self,
        portfolio: Portfolio,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        tls: bool = True,
        cert: CertPair | None = None,
        cert_dir: str | Path | None = None,
        limits: SimLimits | None = None,
        idle_timeout: float = 360.0,
        reauth_delay: float = 10.0,
        slow_delay: float = 10.0,
        sso_lifetime: float = 86_400.0,
        walk_interval: float | None = None,
        nightly_reset: time | None = None,
        nightly_needs_human: bool = False,
        greek_decimals: int | None = None,
        user_id: int = 123456789,
        user_name: str = "simuser1",
        faults: Iterable[FaultStep] = (),
        request_log_size: int = 100_000,
    ) -> None:
        self.portfolio = portfolio
        self.host = host
        self._port = port
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.tls = tls
        self._cert = cert
        self._keep_cert_dir = Path(cert_dir) if cert_dir is not None else None
        self._cert_dir: Path | None = None  # a temporary one, removed at stop()
        self.limits = limits if limits is not None else SimLimits()
        self.idle_timeout = idle_timeout
        self.reauth_delay = reauth_delay
        self.slow_delay = slow_delay
        self.sso_lifetime = sso_lifetime
        self.walk_interval = walk_interval
        self.nightly_reset = nightly_reset
        self.nightly_needs_human = nightly_needs_human
        self.greek_decimals = greek_decimals
        self.user_id = user_id
        self.user_name = user_name
        self._faults = tuple(faults)
        self._runner: web.AppRunner | None = None
        self._tasks = BackgroundTasks(log)
        self._closing = asyncio.Event()
        self._running = False
        self._started_at = 0.0
        # Introspection.
        self._requests: deque[RequestRecord] = deque(maxlen=request_log_size)
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.frozen = 0
        self.sleeping = 0
        self.rate_limit_violations = 0
        # Rate limiting.
        self._windows: dict[str, deque[float]] = {}
        self._violations: deque[float] = deque()
        self._penalty_until = -math.inf
        # Session.
        self._sso_valid = True
        self._sso_login_at = self._clock.monotonic()
        self._sso_login_wall = self._clock.now()
        self._needs_human = False
        self._authenticated = True
        self._competing_until: float | None = None
        self._reauth_due: float | None = None
        self._bridge_ready = False
        self._portfolio_ready = False
        self._preflighted: set[int] = set()
        self._last_activity = self._clock.monotonic()
        self._message = ""
        self._fail = ""
        self._session_token = secrets.token_hex(16)
        self._next_nightly: datetime | None = None
        # Faults: name -> monotonic end (inf = until cleared).
        self._fault_until: dict[str, float] = {}
        self._sentinel_mode = "missing"
        self._sentinel_conids: frozenset[int] | None = None
        self._garbage_seq = 0
        self._cookie_token = secrets.token_hex(16)
        self._fixed_greeks: dict[str, str] = {}
        self._fixed_conids: frozenset[int] | None = None
        self._echo_status = 500
        self._echo_endpoints: frozenset[str] = frozenset()
        self._huge_bytes = 0
        self._huge_chunked = False
        self._huge_endpoints: frozenset[str] = frozenset()
        #: The ``compete`` flag of every ``ssodh/init`` request, in order (None: absent).
        self.compete_flags: list[bool | None] = []

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

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _walk_loop(self, interval: float) -> None:
        while True:
            await self._clock.sleep(interval)
            self.portfolio.step(interval, now=self._clock.now())

    def run_faults(self, steps: Iterable[FaultStep]) -> asyncio.Task[None]:
        """Run a fault script (see :func:`parse_portal_fault_script`) on the simulator clock."""
        return self._tasks.spawn(run_portal_fault_script(self, tuple(steps), self._clock))

    # -- introspection --------------------------------------------------------------------

    @property
    def requests(self) -> tuple[RequestRecord, ...]:
        return tuple(self._requests)

    def count(self, endpoint: str | None = None, *, status: int | None = None) -> int:
        """Requests received (for ``endpoint``, answered with ``status`` when given)."""
        return sum(
            1
            for r in self._requests
            if (endpoint is None or r.endpoint == endpoint)
            and (status is None or r.status == status)
        )

    def max_in_window(self, window: float, endpoint: str | None = None) -> int:
        """The most requests (for ``endpoint``) received within any ``window`` seconds."""
        times = sorted(r.at for r in self._requests if endpoint is None or r.endpoint == endpoint)
        best = 0
        lo = 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    @property
    def parked(self) -> int:
        """Requests held by a fault: frozen (never answered) or slow (waiting on the clock)."""
        return self.frozen + self.sleeping

    @property
    def busy(self) -> int:
        """Requests being worked on right now, not counting :attr:`parked` ones."""
        return self.in_flight - self.parked

    @property
    def session_secrets(self) -> tuple[str, str]:
        """The live session values a client must never log: the ``/tickle`` ``session`` and
        the session cookie's value."""
        return self._session_token, self._cookie_token

    def reset_requests(self) -> None:
        self._requests.clear()
        self.counts.clear()

    @property
    def authenticated(self) -> bool:
        self._advance_time()
        return self._sso_valid and self._authenticated

    @property
    def sso_valid(self) -> bool:
        return self._sso_valid

    @property
    def competing_now(self) -> bool:
        self._advance_time()
        return self._competing()

    @property
    def in_penalty_box(self) -> bool:
        return self._clock.monotonic() < self._penalty_until

    # -- rate limits ----------------------------------------------------------------------

    def reset_rate_limits(self) -> None:
        """Forget the sliding windows, the violations and any penalty box."""
        self._windows.clear()
        self._violations.clear()
        self._penalty_until = -math.inf

    def penalty_box(self, seconds: float | None = None) -> None:
        """Put the client in the penalty box (default: ``limits.penalty_seconds``)."""
        length = self.limits.penalty_seconds if seconds is None else seconds
        self._penalty_until = self._clock.monotonic() + length
        log.info("fault: penalty box for %.0fs", length)

    def _window_ok(self, key: str, limit: tuple[int, float], now: float) -> bool:
        count, per = limit
        window = self._windows.setdefault(key, deque())
        while window and window[0] <= now - per:
            window.popleft()
        return len(window) < count

    def _rate_limited(self, endpoint: str, now: float) -> bool:
        """True (and a violation is counted) when this request is over a limit."""
        checks = [("*", self.limits.global_limit)]
        if endpoint in self.limits.endpoints:
            checks.append((endpoint, self.limits.endpoints[endpoint]))
        if all(self._window_ok(key, limit, now) for key, limit in checks):
            for key, _ in checks:
                self._windows[key].append(now)
            return False
        self.rate_limit_violations += 1
        self._violations.append(now)
        while self._violations and self._violations[0] <= now - self.limits.penalty_window:
            self._violations.popleft()
        if len(self._violations) >= self.limits.penalty_after:
            log.info(
                "simulator: repeat offender, penalty box for %.0fs", self.limits.penalty_seconds
            )
            self._penalty_until = now + self.limits.penalty_seconds
            self._violations.clear()
        return True

    # -- session --------------------------------------------------------------------------

    def _competing(self) -> bool:
        return self._competing_until is not None

    def _start_brokerage(self) -> None:
        self._authenticated = True
        self._competing_until = None
        self._reauth_due = None
        self._bridge_ready = False
        self._portfolio_ready = False
        self._preflighted = set()
        self._message = ""
        self._fail = ""
        self._last_activity = self._clock.monotonic()

    def _end_brokerage(self, message: str) -> None:
        self._authenticated = False
        self._bridge_ready = False
        self._portfolio_ready = False
        self._preflighted = set()
        self._reauth_due = None
        self._message = message

    def _schedule_nightly(self) -> None:
        if self.nightly_reset is None:
            self._next_nightly = None
            return
        local = self._clock.now().astimezone(NEW_YORK)
        candidate = datetime.combine(local.date(), self.nightly_reset, tzinfo=NEW_YORK)
        if candidate <= local:
            candidate = datetime.combine(
                local.date() + timedelta(days=1), self.nightly_reset, tzinfo=NEW_YORK
            )
        self._next_nightly = candidate

    def _advance_time(self) -> None:
        """Apply what the clock's passage implies: reauth done, competing over, timeouts."""
        now = self._clock.monotonic()
        if self._competing_until is not None and now >= self._competing_until:
            self._competing_until = None
            self._message = "the other session ended; initialise a new brokerage session"
        if self._reauth_due is not None and now >= self._reauth_due:
            self._reauth_due = None
            if self._sso_valid and not self._needs_human and not self._competing():
                self._start_brokerage()
        if self._authenticated and now - self._last_activity > self.idle_timeout:
            log.info("simulator: brokerage session timed out (idle)")
            self._end_brokerage("session timed out")
        if now - self._sso_login_at > self.sso_lifetime and self._sso_valid:
            self._sso_valid = False
            self._needs_human = True
            self._end_brokerage("session expired")
        if self._next_nightly is not None and self._clock.now() >= self._next_nightly:
            self.nightly_logout(self.nightly_needs_human)
            self._schedule_nightly()

    def _auth_status(self) -> dict[str, Any]:
        authenticated = self._sso_valid and self._authenticated
        return {
            "authenticated": authenticated,
            "competing": self._competing(),
            "connected": self._sso_valid,
            "established": authenticated,
            "fail": self._fail,
            "message": self._message,
            "MAC": "98:F2:B3:23:BF:A0",
            "hardware_info": "a1b2c3d4|98:F2:B3:23:BF:A0",
            "serverInfo": dict(_SERVER_INFO),
        }

    # -- faults ---------------------------------------------------------------------------

    def _set_fault(self, name: str, seconds: float | None) -> None:
        end = math.inf if seconds is None else self._clock.monotonic() + seconds
        self._fault_until[name] = end

    def _active(self, name: str) -> bool:
        end = self._fault_until.get(name)
        if end is None:
            return False
        if self._clock.monotonic() >= end:
            del self._fault_until[name]
            return False
        return True

    def clear_faults(self) -> None:
        """End every timed fault (not the session state: use :meth:`human_login`)."""
        self._fault_until.clear()
        self._sentinel_conids = None
        self._fixed_conids = None

    def expire_session(self) -> None:
        """The brokerage session times out: ``authenticated: false``; ssodh/init restores it."""
        log.info("fault: brokerage session expired")
        self._end_brokerage("session timed out")

    def nightly_logout(self, needs_human: bool = False, *, sso_expired: bool = True) -> None:
        """IBKR's nightly end of session.

        ``needs_human=False``: ``authenticated: false``; ssodh/init or reauthenticate
        restore it. ``needs_human=True`` (a live login with two-factor authentication):
        nothing but :meth:`human_login` restores it; with ``sso_expired`` every endpoint
        answers 401 meanwhile, else auth status says ``authenticated: false`` and
        ssodh/init and reauthenticate are accepted but do nothing.
        """
        log.info("fault: nightly logout (needs_human=%s)", needs_human)
        self._end_brokerage("session ended (nightly reset)")
        self._needs_human = needs_human
        if needs_human:
            self._fail = "login required"
            if sso_expired:
                self._sso_valid = False

    def human_login(self, *, brokerage: bool = True) -> None:
        """Someone logged in through the gateway's web page (with 2FA).

        With ``brokerage=False`` only the SSO session exists and a client must still call
        ssodh/init.
        """
        log.info("fault: human login")
        self._sso_valid = True
        self._needs_human = False
        self._sso_login_at = self._clock.monotonic()
        self._sso_login_wall = self._clock.now()
        self._session_token = secrets.token_hex(16)
        self._cookie_token = secrets.token_hex(16)
        self._competing_until = None
        self._fail = ""
        if brokerage:
            self._start_brokerage()
        else:
            self._end_brokerage("")

    def competing(self, seconds: float | None = None) -> None:
        """Another login takes the brokerage session for ``seconds`` (None = until it is
        competed back with ``ssodh/init {"compete": true}``); afterwards
        ``authenticated: false`` until ssodh/init."""
        log.info("fault: competing session (%s s)", seconds)
        self._end_brokerage("another session is connected")
        self._competing_until = math.inf if seconds is None else self._clock.monotonic() + seconds

    def rate_limit_storm(self, seconds: float | None = None) -> None:
        """Every request is answered 429 (not counted as the client's violation)."""
        log.info("fault: rate-limit storm (%s s)", seconds)
        self._set_fault("storm", seconds)

    def slow(self, seconds: float | None = None, *, delay: float | None = None) -> None:
        """Each request waits ``delay`` (default ``slow_delay``) on the clock, then 503."""
        if delay is not None:
            self.slow_delay = delay
        log.info("fault: slow gateway (%s s, %.1fs per answer)", seconds, self.slow_delay)
        self._set_fault("slow", seconds)

    def freeze(self, seconds: float | None = None) -> None:
        """Requests arriving in the next ``seconds`` are accepted and never answered."""
        log.info("fault: freeze (%s s)", seconds)
        self._set_fault("freeze", seconds)

    def garbage(self, seconds: float | None = None) -> None:
        """Answers are 200 with non-JSON or wrong-shape bodies."""
        log.info("fault: garbage answers (%s s)", seconds)
        self._set_fault("garbage", seconds)

    def sentinel_greeks(
        self,
        seconds: float | None = None,
        *,
        mode: str = "missing",
        conids: Iterable[int] | None = None,
    ) -> None:
        """Greek fields (7308-7311) of ``conids`` (default all) are absent (``missing``),
        ``""`` (``empty``), ``"-2"`` (``minus2``) or ``"N/A"`` (``na``).

        Client Portal marks "not computed" by an empty or absent field; ``minus2`` is there
        to show that a client reads ``"-2"`` as the number it is (the socket API's sentinel
        is not one in Client Portal strings)."""
        if mode not in SENTINEL_MODES:
            raise ValueError(f"mode must be one of {SENTINEL_MODES}, got {mode!r}")
        log.info("fault: sentinel greeks %s (%s s)", mode, seconds)
        self._sentinel_mode = mode
        self._sentinel_conids = frozenset(conids) if conids is not None else None
        self._set_fault("sentinel", seconds)

    def fixed_greeks(
        self,
        values: Mapping[str, str],
        seconds: float | None = None,
        *,
        conids: Iterable[int] | None = None,
    ) -> None:
        """Snapshot Greeks of ``conids`` (default every option) are sent as the given strings,
        e.g. ``{"theta": "-2.000"}``: a real value that happens to equal IB's socket sentinel.
        Keys are ``delta``, ``gamma``, ``theta``, ``vega``."""
        unknown = set(values) - set(GREEK_FIELD_OF)
        if unknown:
            raise ValueError(f"unknown Greek(s) {sorted(unknown)}; use {sorted(GREEK_FIELD_OF)}")
        log.info("fault: fixed greeks %s (%s s)", dict(values), seconds)
        self._fixed_greeks = {GREEK_FIELD_OF[k]: str(v) for k, v in values.items()}
        self._fixed_conids = frozenset(conids) if conids is not None else None
        self._set_fault("fixed", seconds)

    def echo_session(
        self,
        seconds: float | None = None,
        *,
        status: int = 500,
        endpoints: Iterable[str] | None = None,
    ) -> None:
        """Data endpoints (default: all but ``/tickle`` and auth status) answer ``status``
        with an error body that echoes the session token and cookie, as a gateway that
        reflects its request context into errors does: a client must not log it verbatim."""
        log.info("fault: error bodies echo the session (%s s)", seconds)
        self._echo_status = status
        self._echo_endpoints = frozenset(endpoints) if endpoints is not None else _DATA_ENDPOINTS
        self._set_fault("echo", seconds)

    def huge_body(
        self,
        nbytes: int,
        seconds: float | None = None,
        *,
        chunked: bool = False,
        endpoints: Iterable[str] | None = None,
    ) -> None:
        """Data endpoints (default as :meth:`echo_session`) answer 200 with a JSON array of
        zeros of exactly ``nbytes`` bytes, streamed (the simulator never holds it), with a
        ``Content-Length`` or, ``chunked``, without one: a client must refuse it unread."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        log.info("fault: %d-byte answers (chunked=%s, %s s)", nbytes, chunked, seconds)
        self._huge_bytes = nbytes
        self._huge_chunked = chunked
        self._huge_endpoints = frozenset(endpoints) if endpoints is not None else _DATA_ENDPOINTS
        self._set_fault("huge", seconds)

    def set_position(
        self, account: str, conid: int, quantity: float, avg_cost: float | None = None
    ) -> Position | None:
        return self.portfolio.set_position(account, conid, quantity, avg_cost)

    def remove_position(self, account: str, conid: int) -> Position | None:
        return self.portfolio.remove_position(account, conid)

    def set_spot(self, conid: int, price: float) -> None:
        self.portfolio.set_spot(conid, price)

    # -- HTTP plumbing --------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        routes = [
            ("POST", "/tickle", self._tickle, TICKLE),
            ("GET", "/tickle", self._tickle, None),
            ("POST", "/iserver/auth/status", self._auth, AUTH_STATUS),
            ("GET", "/iserver/auth/status", self._auth, None),
            ("POST", "/iserver/auth/ssodh/init", self._ssodh_init, SSODH_INIT),
            ("POST", "/iserver/reauthenticate", self._reauthenticate, REAUTHENTICATE),
            ("GET", "/iserver/reauthenticate", self._reauthenticate, None),
            ("GET", "/sso/validate", self._sso_validate, SSO_VALIDATE),
            ("POST", "/logout", self._logout, LOGOUT),
            ("GET", "/iserver/accounts", self._iserver_accounts, ISERVER_ACCOUNTS),
            ("GET", "/portfolio/accounts", self._portfolio_accounts, PORTFOLIO_ACCOUNTS),
            ("GET", "/portfolio/{acct}/positions/{page}", self._positions, POSITIONS),
            ("GET", "/iserver/marketdata/snapshot", self._snapshot, SNAPSHOT),
        ]
        names: dict[str, str] = {}
        for method, path, handler, name in routes:
            if name is not None:
                names[path] = name
            app.router.add_route(method, p + path, handler)
        self._endpoint_names = names

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
            return _error(429, "Too many requests")
        if now < self._penalty_until:
            return _error(429, "Too many requests (penalty box)")
        if self._rate_limited(endpoint, now):
            return _error(429, "Too many requests")
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
            return _error(503, "Service Unavailable: the request took too long")
        if self._active("garbage"):
            return self._garbage_response(endpoint)
        if not self._sso_valid:
            return _error(401, "not authenticated")
        self._last_activity = now
        if self._active("echo") and endpoint in self._echo_endpoints:
            token, cookie = self.session_secrets
            return _error(
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
            return _error(401, "not authenticated")
        return None

    # -- endpoints ------------------------------------------------------------------------

    def _with_cookie(self, response: web.Response) -> web.Response:
        response.set_cookie(SESSION_COOKIE, self._cookie_token, secure=True, httponly=True)
        return response

    async def _tickle(self, request: web.Request) -> web.Response:
        now = self._clock.monotonic()
        left_ms = max(0, int((self._sso_login_at + self.sso_lifetime - now) * 1000))
        return self._with_cookie(
            web.json_response(
                {
                    "session": self._session_token,
                    "ssoExpires": left_ms,
                    "collission": self._competing(),
                    "userId": self.user_id,
                    "hmds": {} if self._bridge_ready else {"error": "no bridge"},
                    "iserver": {"authStatus": self._auth_status()},
                }
            )
        )

    async def _auth(self, request: web.Request) -> web.Response:
        return self._with_cookie(web.json_response(self._auth_status()))

    async def _ssodh_init(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body: Any = {}
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(400, "Bad Request: body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "Bad Request: body must be an object")
        flag = body.get("compete")
        self.compete_flags.append(flag if isinstance(flag, bool) else None)
        compete = bool(flag)
        if self._needs_human:
            self._fail = "login required"
        elif self._competing() and not compete:
            self._message = "another session is connected"
        elif not self._authenticated or self._competing():
            self._start_brokerage()
        return web.json_response(self._auth_status())

    async def _reauthenticate(self, request: web.Request) -> web.Response:
        if not self._authenticated and not self._needs_human and self._reauth_due is None:
            self._reauth_due = self._clock.monotonic() + self.reauth_delay
        return web.json_response({"message": "triggered"})

    async def _sso_validate(self, request: web.Request) -> web.Response:
        now = self._clock.monotonic()
        paper = all(a.startswith("D") for a in self.portfolio.accounts)
        return web.json_response(
            {
                "USER_ID": self.user_id,
                "USER_NAME": self.user_name,
                "RESULT": True,
                "AUTH_TIME": int(self._sso_login_wall.timestamp() * 1000),
                "SF_ENABLED": False,
                "IS_FREE_TRIAL": False,
                "CREDENTIAL": self.user_name,
                "IP": request.remote or "127.0.0.1",
                "EXPIRES": max(0, int((self._sso_login_at + self.sso_lifetime - now) * 1000)),
                "QUALIFIED_FOR_MOBILE_AUTH": None,
                "LANDING_APP": "UNIVERSAL",
                "IS_MASTER": False,
                "lastAccessed": int(self._clock.now().timestamp() * 1000),
                "LOGIN_TYPE": 2 if paper else 1,
                "PAPER_USER_NAME": self.user_name,
                "features": {"env": "PROD", "wlms": True, "realtime": True},
                "region": "NJ",
            }
        )

    async def _logout(self, request: web.Request) -> web.Response:
        self._end_brokerage("logged out")
        self._sso_valid = False
        self._needs_human = True
        return web.json_response({"status": True})

    async def _iserver_accounts(self, request: web.Request) -> web.Response:
        refused = self._need_brokerage()
        if refused is not None:
            return refused
        self._bridge_ready = True
        accounts = list(self.portfolio.accounts)
        return web.json_response(
            {
                "accounts": accounts,
                "acctProps": {
                    a: {"hasChildAccounts": False, "supportsCashQty": True, "isProp": False}
                    for a in accounts
                },
                "aliases": {a: a for a in accounts},
                "allowFeatures": {"showGFIS": True, "allowCrypto": False},
                "chartPeriods": {"STK": ["*"], "OPT": ["2h", "1d", "2d", "1w", "1m"]},
                "groups": ["All"] if len(accounts) > 1 else [],
                "profiles": [],
                "selectedAccount": accounts[0],
                "serverInfo": dict(_SERVER_INFO),
                "sessionId": self._session_token[:16],
                "isFt": False,
                "isPaper": all(a.startswith("D") for a in accounts),
            }
        )

    async def _portfolio_accounts(self, request: web.Request) -> web.Response:
        refused = self._need_brokerage()
        if refused is not None:
            return refused
        self._portfolio_ready = True
        return web.json_response([self._account_obj(a) for a in self.portfolio.accounts])

    def _account_obj(self, account: str) -> dict[str, Any]:
        return {
            "id": account,
            "PrepaidCrypto-Z": False,
            "PrepaidCrypto-P": False,
            "brokerageAccess": True,
            "accountId": account,
            "accountVan": account,
            "accountTitle": f"Simulated {account}",
            "displayName": account,
            "accountAlias": None,
            "accountStatus": int(self._sso_login_wall.timestamp() * 1000),
            "currency": "USD",
            "type": "DEMO" if account.startswith("D") else "INDIVIDUAL",
            "tradingType": "PMRGN",
            "businessType": "IB_PROSERVE",
            "ibEntity": "IBLLC-US",
            "faclient": False,
            "clearingStatus": "O",
            "covestor": False,
            "noClientTrading": False,
            "trackVirtualFXPortfolio": True,
            "parent": {"mmc": [], "accountId": "", "isMParent": False, "isMChild": False},
            "desc": account,
        }

    async def _positions(self, request: web.Request) -> web.Response:
        refused = self._need_brokerage()
        if refused is not None:
            return refused
        if not self._portfolio_ready:
            return _error(400, "Bad Request: call /portfolio/accounts first")
        account = request.match_info["acct"]
        try:
            page = int(request.match_info["page"])
        except ValueError:
            return _error(400, "Bad Request: page must be a number")
        if account not in self.portfolio.accounts:
            return _error(500, f"Account {account} is not found or not authorized")
        now = self._clock.now()
        held = sorted(self.portfolio.positions(account), key=lambda p: p.conid)
        chunk = held[page * PAGE_SIZE : (page + 1) * PAGE_SIZE] if page >= 0 else []
        return web.json_response([self._position_row(p, now) for p in chunk])

    def _position_row(self, pos: Position, now: datetime) -> dict[str, Any]:
        inst = pos.instrument
        derivative = inst.sec_type != "STK"
        option = inst.is_option
        price = self.portfolio.price(inst.conid, now)
        value = self.portfolio.market_value(pos, now)
        cost_multiplier = inst.multiplier if derivative else 1.0
        und = inst.underlying_conid or 0
        desc = _contract_desc(inst)
        return {
            "acctId": pos.account,
            "conid": inst.conid,
            "contractDesc": desc,
            "position": pos.quantity,
            "mktPrice": price,
            "mktValue": round(value, 2),
            "currency": inst.currency,
            "avgCost": pos.avg_cost,
            "avgPrice": pos.avg_cost / cost_multiplier,
            "realizedPnl": 0.0,
            "unrealizedPnl": round(self.portfolio.unrealized_pnl(pos, now), 2),
            "exchs": None,
            "expiry": inst.expiry if derivative else None,
            "putOrCall": inst.right if option else None,
            "multiplier": inst.multiplier if derivative else 0.0,
            "strike": _fmt_plain(inst.strike) if inst.strike is not None else "0",
            "exerciseStyle": "AMERICAN" if inst.sec_type == "OPT" else None,
            "conExchMap": [],
            "assetClass": inst.sec_type,
            "undConid": und,
            "model": "",
            "time": 0,
            "chineseName": None,
            "allExchanges": inst.exchange,
            "listingExchange": inst.primary_exchange or inst.exchange,
            "countryCode": "US",
            "name": inst.symbol,
            "lastTradingDay": inst.expiry if derivative else None,
            "group": None,
            "sector": None,
            "sectorGroup": None,
            "ticker": inst.symbol,
            "type": "ETF" if inst.sec_type == "STK" else None,
            "undComp": None,
            "undSym": inst.symbol if derivative else None,
            "fullName": desc,
            "pageSize": PAGE_SIZE,
            "isUS": inst.currency == "USD",
            "isEventContract": False,
        }

    async def _snapshot(self, request: web.Request) -> web.Response:
        if not self._authenticated:
            return _error(400, "Init session first")
        if not self._bridge_ready:
            return _error(400, "Bad Request: no bridge")
        raw_conids = request.query.get("conids", "")
        try:
            conids = [int(c) for c in raw_conids.split(",") if c.strip()]
        except ValueError:
            return _error(400, f"Bad Request: conids must be numbers, got {raw_conids!r}")
        if not conids:
            return _error(400, "Bad Request: conids required")
        fields = [f.strip() for f in request.query.get("fields", "31").split(",") if f.strip()]
        now = self._clock.now()
        rows = []
        for index, conid in enumerate(conids):
            if conid not in self._preflighted:
                # The pre-flight: the gateway subscribes and has nothing to say yet.
                self._preflighted.add(conid)
                rows.append({"conid": conid, "conidEx": str(conid)})
                continue
            rows.append(self._market_row(conid, index, fields, now))
        return web.json_response(rows)

    def _fmt_greek(self, value: float) -> str:
        if self.greek_decimals is None:
            return repr(float(value))
        return f"{value:.{self.greek_decimals}f}"

    def _market_row(
        self, conid: int, index: int, fields: Sequence[str], now: datetime
    ) -> dict[str, Any]:
        row: dict[str, Any] = {"conid": conid, "conidEx": str(conid)}
        try:
            inst = self.portfolio.instrument(conid)
            price = self.portfolio.price(conid, now)
        except KeyError:
            return row  # unknown contract, or an underlying without a price
        row["server_id"] = f"q{index}"
        row["_updated"] = int(now.timestamp() * 1000)
        rth = _is_regular_hours(now)
        spread = max(0.01, round(price * 0.0005, 2))
        elapsed = max(0.0, self._clock.monotonic() - self._started_at)
        volume = (conid * 7919) % 40_000 + 900 + int(elapsed / 5.0)
        values: dict[str, str] = {
            "31": ("" if rth else "C") + format_price(price),
            "84": format_price(max(0.0, price - spread)),
            "86": format_price(price + spread),
            "85": format_size((conid % 13 + 1) * 100),
            "88": format_size((conid % 17 + 1) * 100),
            "87": format_size(volume),
            "55": inst.symbol,
            "7635": format_price(price),
            "6509": "RpB" if rth else "ZpB",
        }
        if inst.underlying_conid is not None:
            values["6457"] = str(inst.underlying_conid)
        greeks = self.portfolio.greeks(conid, now)
        if greeks is not None:
            values["7308"] = self._fmt_greek(greeks.delta)
            values["7309"] = self._fmt_greek(greeks.gamma)
            values["7310"] = self._fmt_greek(greeks.theta)
            values["7311"] = self._fmt_greek(greeks.vega)
            values["7633"] = f"{greeks.implied_vol * 100:.1f}"
            if self._active("fixed") and (
                self._fixed_conids is None or conid in self._fixed_conids
            ):
                values.update(self._fixed_greeks)
            if self._active("sentinel") and (
                self._sentinel_conids is None or conid in self._sentinel_conids
            ):
                for key in GREEK_FIELDS:
                    if self._sentinel_mode == "missing":
                        del values[key]
                    else:
                        values[key] = _SENTINEL_TEXT[self._sentinel_mode]
        for key in fields:
            if key in values:
                row[key] = values[key]
        return row


# -- fault scripts --------------------------------------------------------------------------

_NUM: Final = (int, float)
# Per fault: parameter name -> (accepted types, required?)
_PORTAL_SPEC: Final[Mapping[str, Mapping[str, tuple[tuple[type, ...], bool]]]] = {
    "expire_session": {},
    "nightly_logout": {"needs_human": ((bool,), False), "sso_expired": ((bool,), False)},
    "human_login": {"brokerage": ((bool,), False)},
    "competing": {"seconds": (_NUM, False)},
    "rate_limit_storm": {"seconds": (_NUM, False)},
    "penalty_box": {"seconds": (_NUM, False)},
    "slow": {"seconds": (_NUM, False), "delay": (_NUM, False)},
    "freeze": {"seconds": (_NUM, False)},
    "garbage": {"seconds": (_NUM, False)},
    "sentinel_greeks": {
        "seconds": (_NUM, False),
        "mode": ((str,), False),
        "conids": ((list,), False),
    },
    "fixed_greeks": {
        "seconds": (_NUM, False),
        "values": ((dict,), True),
        "conids": ((list,), False),
    },
    "echo_session": {
        "seconds": (_NUM, False),
        "status": ((int,), False),
        "endpoints": ((list,), False),
    },
    "huge_body": {
        "nbytes": ((int,), True),
        "seconds": (_NUM, False),
        "chunked": ((bool,), False),
        "endpoints": ((list,), False),
    },
    "clear_faults": {},
    **PORTFOLIO_FAULTS,
}
PORTAL_FAULTS: Final = tuple(_PORTAL_SPEC)


def _check_step(index: int, raw: Any) -> FaultStep:
    at, name, params = validate_step(index, raw, _PORTAL_SPEC)
    where = f"step {index}"
    if name == "sentinel_greeks":
        if params.get("mode", "missing") not in SENTINEL_MODES:
            raise FaultScriptError(f"{where}: sentinel mode must be one of {SENTINEL_MODES}")
        conids = params.get("conids")
        if conids is not None and not all(
            isinstance(c, int) and not isinstance(c, bool) for c in conids
        ):
            raise FaultScriptError(f"{where}: sentinel_greeks.conids must be integers")
    if name == "fixed_greeks":
        values = params["values"]
        if not values or set(values) - set(GREEK_FIELD_OF):
            raise FaultScriptError(
                f"{where}: fixed_greeks.values keys must be among {sorted(GREEK_FIELD_OF)}"
            )
        if not all(isinstance(v, str) for v in values.values()):
            raise FaultScriptError(f"{where}: fixed_greeks.values must be strings")
        conids = params.get("conids")
        if conids is not None and not all(
            isinstance(c, int) and not isinstance(c, bool) for c in conids
        ):
            raise FaultScriptError(f"{where}: fixed_greeks.conids must be integers")
    if name in ("echo_session", "huge_body"):
        endpoints = params.get("endpoints")
        if endpoints is not None and not all(isinstance(e, str) for e in endpoints):
            raise FaultScriptError(f"{where}: {name}.endpoints must be endpoint names")
    if name == "huge_body" and params["nbytes"] < 0:
        raise FaultScriptError(f"{where}: huge_body.nbytes must be >= 0")
    return FaultStep(at, name, MappingProxyType(params))


def parse_portal_fault_script(data: Any) -> tuple[FaultStep, ...]:
    """Validate a decoded script (``[{"at": s, "fault": name, ...}]``), sorted by ``at``."""
    return parse_steps(data, _check_step)


def load_portal_fault_script(path: str | Path) -> tuple[FaultStep, ...]:
    return load_steps(path, _check_step)


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def apply_portal_fault(sim: PortalSimulator, step: FaultStep) -> None:
    """Run one step against ``sim``."""
    p = step.params
    match step.fault:
        case "expire_session":
            sim.expire_session()
        case "nightly_logout":
            sim.nightly_logout(
                bool(p.get("needs_human", False)), sso_expired=bool(p.get("sso_expired", True))
            )
        case "human_login":
            sim.human_login(brokerage=bool(p.get("brokerage", True)))
        case "competing":
            sim.competing(_opt(p.get("seconds")))
        case "rate_limit_storm":
            sim.rate_limit_storm(_opt(p.get("seconds")))
        case "penalty_box":
            sim.penalty_box(_opt(p.get("seconds")))
        case "slow":
            sim.slow(_opt(p.get("seconds")), delay=_opt(p.get("delay")))
        case "freeze":
            sim.freeze(_opt(p.get("seconds")))
        case "garbage":
            sim.garbage(_opt(p.get("seconds")))
        case "sentinel_greeks":
            conids = p.get("conids")
            sim.sentinel_greeks(
                _opt(p.get("seconds")),
                mode=str(p.get("mode", "missing")),
                conids=None if conids is None else [int(c) for c in conids],
            )
        case "fixed_greeks":
            conids = p.get("conids")
            sim.fixed_greeks(
                {str(k): str(v) for k, v in p["values"].items()},
                _opt(p.get("seconds")),
                conids=None if conids is None else [int(c) for c in conids],
            )
        case "echo_session":
            endpoints = p.get("endpoints")
            sim.echo_session(
                _opt(p.get("seconds")),
                status=int(p.get("status", 500)),
                endpoints=None if endpoints is None else [str(e) for e in endpoints],
            )
        case "huge_body":
            endpoints = p.get("endpoints")
            sim.huge_body(
                int(p["nbytes"]),
                _opt(p.get("seconds")),
                chunked=bool(p.get("chunked", False)),
                endpoints=None if endpoints is None else [str(e) for e in endpoints],
            )
        case "clear_faults":
            sim.clear_faults()
        case "set_position":
            sim.set_position(
                str(p["account"]), int(p["conid"]), float(p["quantity"]), _opt(p.get("avg_cost"))
            )
        case "remove_position":
            sim.remove_position(str(p["account"]), int(p["conid"]))
        case "set_spot":
            sim.set_spot(int(p["conid"]), float(p["price"]))
        case _:
            raise FaultScriptError(f"unknown fault {step.fault!r}")


async def run_portal_fault_script(
    sim: PortalSimulator, steps: Iterable[FaultStep], clock: Clock
) -> None:
    """Apply every step at its time on ``clock`` (relative to the call)."""
    start = clock.monotonic()
    for step in sorted(steps, key=lambda s: s.at):
        await clock.sleep_until(start + step.at)
        log.info("portal fault script at %.1fs: %s %s", step.at, step.fault, dict(step.params))
        apply_portal_fault(sim, step)


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
