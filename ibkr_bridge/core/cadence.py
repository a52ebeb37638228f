"""The writer's drift-free tick schedule, as pure arithmetic on monotonic seconds.

Tick *k* (1-based) is due at ``start + k * interval``: when a tick ran, or how long it
took, never moves a later one, so the cadence does not drift. A driver sleeps until
:meth:`Cadence.due` and, on waking at ``now``, asks :meth:`Cadence.woke` what happened:
the ticks whose time passed while it was not scheduled are *missed* (counted, logged,
never run late in a burst), and the tick to sleep for next is the first one still in the
future. No clock is read here; ``now`` is an argument.

Public API:

``Cadence(start, interval)``
    ``due(k) -> float`` the monotonic time tick ``k`` is due; ``woke(k, now) -> Wake``
    the outcome of waking at ``now`` for tick ``k``.

``Wake(missed, next_k)``
    ``missed`` ticks whose time passed before ``now`` (0 when on time); ``next_k`` the
    tick to wait for after running this one.
"""

from __future__ import annotations

import math
from typing import Any

from attrs import field, frozen

__all__ = ["Cadence", "Wake"]


def _check_finite(_: Any, attribute: Any, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be finite, got {value!r}")


def _check_interval(_: Any, attribute: Any, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be finite and > 0, got {value!r}")


@frozen
class Wake:
    """What waking for a tick found: how many ticks were missed, which one is next."""

    missed: int
    next_k: int


@frozen
class Cadence:
    """Ticks every ``interval`` seconds after ``start`` (monotonic), never drifting."""

    start: float = field(converter=float, validator=_check_finite)
    interval: float = field(converter=float, validator=_check_interval)

    def due(self, k: int) -> float:
        """The monotonic time tick ``k`` is due (computed from ``start``, never accumulated)."""
        return self.start + k * self.interval

    def woke(self, k: int, now: float) -> Wake:
        """Waking at ``now`` for tick ``k``: the ticks missed, and the next one to wait for.

        Tick ``k`` itself runs now (late or not); the ``missed`` ticks after it whose time
        has also passed are skipped, so the next one is due after ``now``.
        """
        late = int((now - self.due(k)) // self.interval)
        missed = late if late > 0 else 0
        # The floor division can land one slot off when ``now`` sits on a slot boundary
        # (0.15 // 0.01 is 14.0): settle it on the due times themselves, so the next tick
        # is never already due (two ticks back to back) and no future slot counts as missed.
        while self.due(k + missed + 1) <= now:
            missed += 1
        while missed > 0 and self.due(k + missed) > now:
            missed -= 1
        return Wake(missed=missed, next_k=k + missed + 1)
