"""Client-side rate limiting: token buckets per endpoint plus one global bucket.

The Client Portal gateway answers 429 beyond its limits (10 requests/s overall, some
endpoints far less) and puts repeat offenders in a 10-minute penalty box, so the client
must never get there. A request waits for a token in its endpoint's bucket *and* in the
global bucket. A bucket of capacity ``burst`` refilled at ``rate`` per second admits at
most ``burst + rate * w`` requests in any window of ``w`` seconds; :data:`PORTAL_LIMITS`
is chosen so that bound stays under every published limit.

After a 429 anyway (another client on the same gateway, a stricter gateway), the endpoint
is paused with exponential back-off. Time comes from an injectable
:class:`~ibkr_bridge.core.clock.Clock`, so tests run the limiter on a FakeClock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from attrs import field, frozen

from ibkr_bridge.core.clock import Clock, SystemClock

# A token refilled "almost" fully after a float sleep counts as there.
_EPSILON: Final = 1e-9


def _positive(_: object, attribute: object, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"must be positive and finite, got {value!r}")


@frozen
class Limit:
    """A token bucket's shape: ``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float = field(converter=float, validator=_positive)
    burst: float = field(default=1.0, converter=float, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")

    def max_in(self, window: float) -> int:
        """The most requests this bucket can admit in any window of ``window`` seconds."""
        return math.floor(self.burst + self.rate * window + _EPSILON)


class TokenBucket:
    """One bucket on ``clock``; starts full."""

    def __init__(self, limit: Limit, clock: Clock) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = limit.burst
        self._stamp = clock.monotonic()
        self._paused_until = -math.inf

    def _refill(self) -> float:
        now = self._clock.monotonic()
        if now > self._stamp:
            self._tokens = min(
                self.limit.burst, self._tokens + (now - self._stamp) * self.limit.rate
            )
            self._stamp = now
        return now

    def wait_time(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        now = self._refill()
        pause = max(0.0, self._paused_until - now)
        missing = 1.0 - self._tokens
        refill = missing / self.limit.rate if missing > _EPSILON else 0.0
        return max(pause, refill)

    def take(self) -> None:
        """Spend a token; callers check :meth:`wait_time` first."""
        self._refill()
        self._tokens -= 1.0

    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds``; the bucket refills from empty afterwards."""
        now = self._refill()
        self._paused_until = max(self._paused_until, now + seconds)
        # Empty it so the first request after the pause is not followed by a burst.
        self._tokens = 0.0
        self._stamp = self._paused_until

    @property
    def paused_until(self) -> float:
        return self._paused_until


#: Conservative client limits for the Client Portal gateway, by endpoint name (see
#: :mod:`ibkr_bridge.feeds.portal.feed`). Gateway limits: 10/s overall, snapshot 10/s, tickle
#: 1/s, /portfolio/accounts 1 per 5 s, /sso/validate 1/min.
# The burst covers a whole connect (auth status, ssodh/init, both account calls, positions,
# the pre-flight snapshot) without waiting; polling needs well under 1 request/s.
PORTAL_GLOBAL_LIMIT: Final = Limit(rate=3.0, burst=6.0)  # <= 9 in any 1 s
PORTAL_LIMITS: Final[Mapping[str, Limit]] = MappingProxyType(
    {
        "snapshot": Limit(rate=4.0, burst=2.0),  # <= 6 in any 1 s
        "tickle": Limit(rate=0.5, burst=1.0),  # <= 1 in any 1 s
        "portfolio_accounts": Limit(rate=1 / 6, burst=1.0),  # <= 1 in any 5 s
        "sso_validate": Limit(rate=1 / 75, burst=1.0),  # <= 1 in any 60 s
        "positions": Limit(rate=2.0, burst=4.0),
        "iserver_accounts": Limit(rate=0.5, burst=2.0),
        "auth_status": Limit(rate=1.0, burst=2.0),
        "ssodh_init": Limit(rate=0.2, burst=1.0),
        "reauthenticate": Limit(rate=0.1, burst=1.0),
        "logout": Limit(rate=0.2, burst=1.0),
    }
)
DEFAULT_ENDPOINT_LIMIT: Final = Limit(rate=1.0, burst=2.0)

#: SOCKET mode: contract-details lookups (reqContractDetails) for futures and futures-option
#: legs and option underlyings, done after connect. IBKR allows about 50 API messages per
#: second per client in all (ib_async throttles to 45); at most 30 lookups in any 1 s leaves
#: room for the market-data requests that follow them.
SOCKET_DETAILS_LIMIT: Final = Limit(rate=20.0, burst=10.0)


class RateLimiter:
    """Per-endpoint buckets plus a global one, with back-off after a 429.

    ``await acquire(endpoint)`` returns once both buckets gave a token (sleeping on the
    clock meanwhile). ``penalize(endpoint)`` after a 429 pauses that endpoint for
    ``backoff_initial`` seconds, doubling on each further 429 up to ``backoff_max``;
    ``succeeded(endpoint)`` resets the doubling.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        global_limit: Limit | None = PORTAL_GLOBAL_LIMIT,
        limits: Mapping[str, Limit] = PORTAL_LIMITS,
        default: Limit = DEFAULT_ENDPOINT_LIMIT,
        backoff_initial: float = 5.0,
        backoff_max: float = 120.0,
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._limits = dict(limits)
        self._default = default
        self._global = TokenBucket(global_limit, self._clock) if global_limit else None
        self._buckets: dict[str, TokenBucket] = {}
        self._strikes: dict[str, int] = {}
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max

    def limit(self, endpoint: str) -> Limit:
        return self._limits.get(endpoint, self._default)

    @property
    def global_limit(self) -> Limit | None:
        return self._global.limit if self._global is not None else None

    def _bucket(self, endpoint: str) -> TokenBucket:
        bucket = self._buckets.get(endpoint)
        if bucket is None:
            bucket = self._buckets[endpoint] = TokenBucket(self.limit(endpoint), self._clock)
        return bucket

    def wait_time(self, endpoint: str) -> float:
        """Seconds until a request to ``endpoint`` may go (0 = now)."""
        waits = [self._bucket(endpoint).wait_time()]
        if self._global is not None:
            waits.append(self._global.wait_time())
        return max(waits)

    def try_acquire(self, endpoint: str) -> bool:
        """Take the tokens if both are there now; never waits."""
        if self.wait_time(endpoint) > 0:
            return False
        self._bucket(endpoint).take()
        if self._global is not None:
            self._global.take()
        return True

    async def acquire(self, endpoint: str) -> None:
        """Wait on the clock until a request to ``endpoint`` may go, and take the tokens."""
        # No await between the check and the take, so concurrent callers cannot both
        # spend the same token.
        while not self.try_acquire(endpoint):
            await self._clock.sleep(self.wait_time(endpoint))

    def penalize(self, endpoint: str) -> float:
        """The gateway answered 429: pause ``endpoint``; returns the pause in seconds."""
        strikes = self._strikes.get(endpoint, 0)
        self._strikes[endpoint] = strikes + 1
        pause = min(self.backoff_max, self.backoff_initial * 2.0**strikes)
        self._bucket(endpoint).pause(pause)
        return pause

    def succeeded(self, endpoint: str) -> None:
        self._strikes.pop(endpoint, None)

    def paused(self, endpoint: str) -> bool:
        return self._bucket(endpoint).paused_until > self._clock.monotonic()
