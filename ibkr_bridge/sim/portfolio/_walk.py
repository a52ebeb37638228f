"""The seeded random walk of underlying prices: one zero-drift geometric-Brownian step.

Given the seed of the ``random.Random`` and the ``dt`` of every step, a session is
reproducible: the draws go to the underlyings in conid order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from ibkr_bridge.sim.portfolio._calendar import SECONDS_PER_YEAR


def walk_step(
    spots: dict[int, float],
    volatilities: Mapping[int, float],
    default_volatility: float,
    rng: random.Random,
    dt_seconds: float,
) -> None:
    """Move every price in ``spots`` (in place) by one step of ``dt_seconds``.

    One Gaussian draw per underlying even when it does not move (``dt`` or its volatility
    zero), so that later draws do not depend on which underlyings happened to move.
    """
    if dt_seconds < 0:
        raise ValueError("dt_seconds must not be negative")
    dt = dt_seconds / SECONDS_PER_YEAR
    # Sorted so that the draws map to the same underlyings on every run.
    for conid in sorted(spots):
        vol = volatilities.get(conid, default_volatility)
        shock = rng.gauss(0.0, 1.0)
        if dt > 0 and vol > 0:
            growth = math.exp(-0.5 * vol * vol * dt + vol * math.sqrt(dt) * shock)
            spots[conid] *= growth
