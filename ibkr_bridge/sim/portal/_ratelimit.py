"""The gateway's rate limits: sliding windows per endpoint and overall, and the penalty box."""

from __future__ import annotations

import math
from collections import deque

from ibkr_bridge.sim.portal._api import log
from ibkr_bridge.sim.portal._state import PortalState


class RateLimits(PortalState):
    """Counts each request against :class:`SimLimits`; repeat offenders go to the penalty box."""

    @property
    def in_penalty_box(self) -> bool:
        return self._clock.monotonic() < self._penalty_until

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
