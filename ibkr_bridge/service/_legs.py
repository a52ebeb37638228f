"""Episodes of option legs without current Greeks: one event when they start, one at the end.

A leg is "missing" from the tick its Greeks first fail the staleness rules
(``docs/greeks.md``) until a tick finds them current again or the position closed; a leg
back inside its grace period (re-subscribed after a reconnect) is still missing.
"""

from __future__ import annotations

from ibkr_bridge.core.greeks import LegProblem, LegsVerdict
from ibkr_bridge.feeds.protocol import FeedListener

__all__ = ["LegEpisodes"]

#: How many legs a ``legs_missing`` message names before "...".
_NAMED: int = 10


class LegEpisodes:
    """The open ``legs_missing`` episodes, by conid; kept across reconnects."""

    def __init__(self, events: FeedListener, policy: str) -> None:
        self._events = events
        self._policy = policy
        self._missing: dict[int, LegProblem] = {}

    def track(self, verdict: LegsVerdict) -> bool:
        """Log the episodes ``verdict`` starts and ends; whether ``legs_missing`` was logged."""
        now_missing = {p.conid: p for p in verdict.missing}
        new = [p for conid, p in now_missing.items() if conid not in self._missing]
        ended = [
            p
            for conid, p in self._missing.items()
            if conid not in now_missing and conid not in verdict.waiting
        ]
        if new:
            self._missing.update((p.conid, p) for p in new)
            self._announce_missing(new)
        if ended:
            for p in ended:
                del self._missing[p.conid]
            self._announce_recovered(ended, verdict)
        return bool(new)

    def _announce_missing(self, new: list[LegProblem]) -> None:
        policy = self._policy
        consequence = (
            "rows are written without them, counted in legs_missing"
            if policy == "partial"
            else "no row is written until they have current Greeks"
        )
        self._events.feed_event(
            "legs_missing",
            f"{len(new)} option leg(s) without current Greeks: "
            + "; ".join(p.describe() for p in new[:_NAMED])
            + ("; ..." if len(new) > _NAMED else "")
            + f"; {consequence} (BRIDGE_MISSING_LEGS={policy})",
            status="warning",
            detail={
                "legs": [{"conid": p.conid, "name": p.name, "why": p.why} for p in new],
                "policy": policy,
            },
        )

    def _announce_recovered(self, ended: list[LegProblem], verdict: LegsVerdict) -> None:
        recovered = [p for p in ended if p.conid in verdict.legs]
        closed = [p for p in ended if p.conid not in verdict.legs]
        parts = []
        if recovered:
            parts.append("current Greeks again: " + ", ".join(p.name for p in recovered))
        if closed:
            parts.append("position closed: " + ", ".join(p.name for p in closed))
        self._events.feed_event(
            "legs_recovered",
            f"{len(ended)} option leg(s) no longer missing ({'; '.join(parts)})",
            detail={
                "recovered": [{"conid": p.conid, "name": p.name} for p in recovered],
                "closed": [{"conid": p.conid, "name": p.name} for p in closed],
            },
        )
