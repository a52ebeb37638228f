"""The Client Portal simulator's fault scripts: the fault names, their checks, and running them.

A script is a list of steps in the format of :mod:`ibkr_bridge.sim.faults`, with the names
in :data:`PORTAL_FAULTS`; each step calls the fault method of the same name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from ibkr_bridge.core.clock import Clock
from ibkr_bridge.sim.faults import (
    PORTFOLIO_FAULTS,
    FaultScriptError,
    FaultStep,
    apply_portfolio_fault,
    load_steps,
    opt_float,
    parse_steps,
    validate_step,
)
from ibkr_bridge.sim.portal._api import GREEK_FIELD_OF, SENTINEL_MODES, log
from ibkr_bridge.sim.portal._faults import Faults

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
        "implied_vol": ((bool,), False),
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


def apply_portal_fault(sim: Faults, step: FaultStep) -> None:
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
            sim.competing(opt_float(p.get("seconds")))
        case "rate_limit_storm":
            sim.rate_limit_storm(opt_float(p.get("seconds")))
        case "penalty_box":
            sim.penalty_box(opt_float(p.get("seconds")))
        case "slow":
            sim.slow(opt_float(p.get("seconds")), delay=opt_float(p.get("delay")))
        case "freeze":
            sim.freeze(opt_float(p.get("seconds")))
        case "garbage":
            sim.garbage(opt_float(p.get("seconds")))
        case "sentinel_greeks":
            conids = p.get("conids")
            sim.sentinel_greeks(
                opt_float(p.get("seconds")),
                mode=str(p.get("mode", "missing")),
                conids=None if conids is None else [int(c) for c in conids],
                implied_vol=bool(p.get("implied_vol", False)),
            )
        case "fixed_greeks":
            conids = p.get("conids")
            sim.fixed_greeks(
                {str(k): str(v) for k, v in p["values"].items()},
                opt_float(p.get("seconds")),
                conids=None if conids is None else [int(c) for c in conids],
            )
        case "echo_session":
            endpoints = p.get("endpoints")
            sim.echo_session(
                opt_float(p.get("seconds")),
                status=int(p.get("status", 500)),
                endpoints=None if endpoints is None else [str(e) for e in endpoints],
            )
        case "huge_body":
            endpoints = p.get("endpoints")
            sim.huge_body(
                int(p["nbytes"]),
                opt_float(p.get("seconds")),
                chunked=bool(p.get("chunked", False)),
                endpoints=None if endpoints is None else [str(e) for e in endpoints],
            )
        case "clear_faults":
            sim.clear_faults()
        case _:
            if not apply_portfolio_fault(sim, step):
                raise FaultScriptError(f"unknown fault {step.fault!r}")


async def run_portal_fault_script(sim: Faults, steps: Iterable[FaultStep], clock: Clock) -> None:
    """Apply every step at its time on ``clock`` (relative to the call)."""
    start = clock.monotonic()
    for step in sorted(steps, key=lambda s: s.at):
        await clock.sleep_until(start + step.at)
        log.info("portal fault script at %.1fs: %s %s", step.at, step.fault, dict(step.params))
        apply_portal_fault(sim, step)
