"""The state every part of the Client Portal simulator shares, and what tests inspect of it.

:class:`PortalState` holds the session, rate-limit and fault fields that the request gate,
the endpoints and the fault methods read and change, the request log with its counters,
and the deadlines of timed faults.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections import Counter, deque
from collections.abc import Iterable
from datetime import datetime, time
from pathlib import Path

from aiohttp import web

from ibkr_bridge.core.clock import Clock, SystemClock
from ibkr_bridge.sim._tasks import AsyncRunning, BackgroundTasks
from ibkr_bridge.sim.faults import FaultStep
from ibkr_bridge.sim.portal._api import RequestRecord, SimLimits, log
from ibkr_bridge.sim.portfolio import Portfolio, Quote
from ibkr_bridge.sim.tls import CertPair


class PortalState(AsyncRunning):
    """What every part of the simulator works on; see :class:`PortalSimulator` for the arguments."""

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
        self._sentinel_iv = False  # the sentinel also takes field 7633 (implied vol)
        # The latest bid/ask/last served per conid (served_quotes): what a client's mid is.
        self._quotes: dict[int, deque[Quote]] = {}
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

    # -- timed faults ---------------------------------------------------------------------

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
