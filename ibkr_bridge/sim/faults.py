"""Scripted faults for the simulators.

A fault script is a list of steps, each ``{"at": seconds, "fault": name, ...params}``,
``at`` counted from when the script starts on the simulator's clock::

    [
      {"at": 10, "fault": "daily_reset", "kind": "1101", "outage": 20},
      {"at": 40, "fault": "sentinel_greeks", "mode": "minus2", "seconds": 15},
      {"at": 50, "fault": "withhold_greeks", "conid": 756733, "seconds": 30},
      {"at": 55, "fault": "farm_notice", "code": 2103, "farm": "usopt"},
      {"at": 60, "fault": "set_position", "account": "DU1234567", "conid": 756733,
       "quantity": 200},
      {"at": 90, "fault": "restart", "downtime": 5, "stale_ids": 10}
    ]

Parameters are checked when the script is loaded, so a typo fails at start-up rather
than in the middle of a long soak test.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol

from attrs import frozen

from ibkr_bridge.core.clock import Clock
from ibkr_bridge.sim.portfolio import Instrument, Portfolio, Position

log = logging.getLogger(__name__)

SENTINEL_MODES: Final = ("minus2", "vega_theta", "dblmax", "nan", "missing")
RESET_KINDS: Final = ("1101", "1102")
FARM_CODES: Final = (2103, 2104, 2105, 2106, 2107, 2108, 2157, 2158)
#: The ``huge_frame`` fault's defaults: a 2 GiB frame announced, streamed 1 MiB at a time.
HUGE_FRAME_SIZE: Final = 1 << 31
HUGE_FRAME_CHUNK: Final = 1 << 20
#: The largest length the TWS API's 4-byte big-endian frame prefix can announce.
MAX_DECLARED_FRAME: Final = (1 << 32) - 1


from ibkr_bridge.core.errors import FaultScriptError as FaultScriptError  # noqa: E402

# Per fault: parameter name → (accepted Python types, required?)
_NUM = (int, float)
# fault name -> parameter -> (accepted types, required)
ParamSpec = Mapping[str, Mapping[str, tuple[tuple[type, ...], bool]]]
# Faults on the shared portfolio model, the same for every simulator.
PORTFOLIO_FAULTS: Final[ParamSpec] = {
    "set_position": {
        "account": ((str,), True),
        "conid": ((int,), True),
        "quantity": (_NUM, True),
        "avg_cost": (_NUM, False),
    },
    "remove_position": {"account": ((str,), True), "conid": ((int,), True)},
    "set_spot": {"conid": ((int,), True), "price": (_NUM, True)},
}
_SPEC: Final[ParamSpec] = {
    "restart": {"downtime": (_NUM, False), "stale_ids": (_NUM, False)},
    "port_reset": {},
    "daily_reset": {"kind": ((str, int), False), "outage": (_NUM, False)},
    "refuse": {"seconds": (_NUM, False)},
    "freeze": {"seconds": (_NUM, False)},
    "garbage": {"nbytes": ((int,), False), "framed": ((bool,), False), "count": ((int,), False)},
    "huge_frame": {"size": ((int,), False), "nbytes": ((int,), False), "chunk": ((int,), False)},
    "error_message": {"code": ((int,), True), "text": ((str,), True), "req_id": ((int,), False)},
    "sentinel_greeks": {"mode": ((str,), True), "seconds": (_NUM, False)},
    "withhold_greeks": {"conid": ((int,), True), "seconds": (_NUM, False)},
    "resume_greeks": {"conid": ((int,), True)},
    "farm_notice": {"code": ((int,), True), "farm": ((str,), False)},
    **PORTFOLIO_FAULTS,
}
FAULT_NAMES: Final = tuple(_SPEC)


@frozen
class FaultStep:
    """One scheduled fault: run ``fault`` with ``params`` ``at`` seconds into the script."""

    at: float
    fault: str
    params: Mapping[str, Any]


class PortfolioTarget(Protocol):
    """What a simulator offers to the :data:`PORTFOLIO_FAULTS` steps."""

    def set_position(
        self, account: str, conid: int, quantity: float, avg_cost: float | None = None
    ) -> object: ...

    def remove_position(self, account: str, conid: int) -> object: ...

    def set_spot(self, conid: int, price: float) -> None: ...


class FaultTarget(PortfolioTarget, Protocol):
    """What a simulator offers to a fault script."""

    async def restart(self, downtime: float = 0.0, stale_ids: float = 0.0) -> None: ...

    async def port_reset(self) -> None: ...

    async def daily_reset(self, kind: str = "1101", outage: float = 30.0) -> None: ...

    async def refuse(self, seconds: float | None = None) -> None: ...

    async def freeze(self, seconds: float | None = None) -> None: ...

    async def garbage(self, nbytes: int = 64, framed: bool = True, count: int = 1) -> None: ...

    async def huge_frame(
        self, size: int = HUGE_FRAME_SIZE, nbytes: int | None = None, chunk: int = HUGE_FRAME_CHUNK
    ) -> object: ...

    async def error_message(self, code: int, text: str, req_id: int = -1) -> None: ...

    async def sentinel_greeks(self, mode: str, seconds: float | None = None) -> None: ...

    async def withhold_greeks(self, conid: int, seconds: float | None = None) -> None: ...

    def resume_greeks(self, conid: int) -> None: ...

    async def farm_notice(self, code: int, farm: str | None = None) -> None: ...


class PortfolioFaults:
    """The :data:`PORTFOLIO_FAULTS` as methods: a simulator with a ``portfolio`` inherits them."""

    portfolio: Portfolio

    def set_position(
        self, account: str, conid: int | Instrument, quantity: float, avg_cost: float | None = None
    ) -> Position | None:
        """Change a position; clients see it (TWS subscribers get position/updatePortfolio)."""
        return self.portfolio.set_position(account, conid, quantity, avg_cost)

    def remove_position(self, account: str, conid: int) -> Position | None:
        return self.portfolio.remove_position(account, conid)

    def set_spot(self, conid: int, price: float) -> None:
        self.portfolio.set_spot(conid, price)


def validate_step(index: int, raw: Any, spec_table: ParamSpec) -> tuple[float, str, dict[str, Any]]:
    """The checks every simulator's fault scripts share: ``at``, a known ``fault`` name,
    parameters of the declared types, required ones present. Returns (at, fault, params)."""
    where = f"step {index}"
    if not isinstance(raw, Mapping):
        raise FaultScriptError(f"{where}: expected an object, got {raw!r}")
    at = raw.get("at")
    if isinstance(at, bool) or not isinstance(at, _NUM) or not math.isfinite(at) or at < 0:
        raise FaultScriptError(f"{where}: 'at' must be seconds >= 0, got {at!r}")
    name = raw.get("fault")
    if not isinstance(name, str) or name not in spec_table:
        raise FaultScriptError(f"{where}: unknown fault {name!r}; known: {', '.join(spec_table)}")
    spec = spec_table[name]
    params = {k: v for k, v in raw.items() if k not in ("at", "fault", "_comment")}
    for key, value in params.items():
        if key not in spec:
            raise FaultScriptError(f"{where}: {name} takes no parameter {key!r}")
        types, _ = spec[key]
        if value is not None and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            raise FaultScriptError(f"{where}: {name}.{key} has the wrong type: {value!r}")
    for key, (_, required) in spec.items():
        if required and params.get(key) is None:
            raise FaultScriptError(f"{where}: {name} needs {key!r}")
    return float(at), name, params


def _check_step(index: int, raw: Any) -> FaultStep:
    at, name, params = validate_step(index, raw, _SPEC)
    where = f"step {index}"
    if name == "daily_reset" and "kind" in params:
        params["kind"] = str(params["kind"])
        if params["kind"] not in RESET_KINDS:
            raise FaultScriptError(f"{where}: daily_reset kind must be 1101 or 1102")
    if name == "garbage" and (params.get("nbytes", 64) < 0 or params.get("count", 1) < 0):
        raise FaultScriptError(f"{where}: garbage nbytes and count must be >= 0")
    if name == "huge_frame" and not 0 <= params.get("size", 0) <= MAX_DECLARED_FRAME:
        raise FaultScriptError(f"{where}: huge_frame size must be 0..{MAX_DECLARED_FRAME}")
    if name == "huge_frame" and (params.get("nbytes", 0) < 0 or params.get("chunk", 1) <= 0):
        raise FaultScriptError(f"{where}: huge_frame nbytes must be >= 0 and chunk > 0")
    if name == "sentinel_greeks" and params["mode"] not in SENTINEL_MODES:
        raise FaultScriptError(f"{where}: sentinel mode must be one of {SENTINEL_MODES}")
    if name == "farm_notice" and params["code"] not in FARM_CODES:
        raise FaultScriptError(f"{where}: farm_notice code must be one of {FARM_CODES}")
    return FaultStep(at, name, MappingProxyType(params))


def parse_steps(data: Any, check: Callable[[int, Any], FaultStep]) -> tuple[FaultStep, ...]:
    """Validate a decoded script (a list of steps) with ``check`` and sort it by ``at``."""
    if not isinstance(data, Sequence) or isinstance(data, str | bytes):
        raise FaultScriptError("a fault script is a list of steps")
    steps = [check(i, raw) for i, raw in enumerate(data)]
    return tuple(sorted(steps, key=lambda s: s.at))


def load_steps(path: str | Path, check: Callable[[int, Any], FaultStep]) -> tuple[FaultStep, ...]:
    """Read a JSON fault script file and validate it with ``check``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FaultScriptError(f"{path}: {exc}") from exc
    return parse_steps(data, check)


def parse_fault_script(data: Any) -> tuple[FaultStep, ...]:
    """Validate a decoded IB Gateway script (a list of steps) and sort it by ``at``."""
    return parse_steps(data, _check_step)


def load_fault_script(path: str | Path) -> tuple[FaultStep, ...]:
    return load_steps(path, _check_step)


async def apply_fault(target: FaultTarget, step: FaultStep) -> None:
    """Run one step against ``target`` (the simulator)."""
    p = step.params
    match step.fault:
        case "restart":
            await target.restart(float(p.get("downtime", 0.0)), float(p.get("stale_ids", 0.0)))
        case "port_reset":
            await target.port_reset()
        case "daily_reset":
            await target.daily_reset(str(p.get("kind", "1101")), float(p.get("outage", 30.0)))
        case "refuse":
            await target.refuse(opt_float(p.get("seconds")))
        case "freeze":
            await target.freeze(opt_float(p.get("seconds")))
        case "garbage":
            await target.garbage(
                int(p.get("nbytes", 64)), bool(p.get("framed", True)), int(p.get("count", 1))
            )
        case "huge_frame":
            nbytes = p.get("nbytes")
            await target.huge_frame(
                int(p.get("size", HUGE_FRAME_SIZE)),
                None if nbytes is None else int(nbytes),
                int(p.get("chunk", HUGE_FRAME_CHUNK)),
            )
        case "error_message":
            await target.error_message(int(p["code"]), str(p["text"]), int(p.get("req_id", -1)))
        case "sentinel_greeks":
            await target.sentinel_greeks(str(p["mode"]), opt_float(p.get("seconds")))
        case "withhold_greeks":
            await target.withhold_greeks(int(p["conid"]), opt_float(p.get("seconds")))
        case "resume_greeks":
            target.resume_greeks(int(p["conid"]))
        case "farm_notice":
            farm = p.get("farm")
            await target.farm_notice(int(p["code"]), None if farm is None else str(farm))
        case _:
            if not apply_portfolio_fault(target, step):
                raise FaultScriptError(f"unknown fault {step.fault!r}")


def apply_portfolio_fault(target: PortfolioTarget, step: FaultStep) -> bool:
    """Run a :data:`PORTFOLIO_FAULTS` step against ``target``; False for any other fault."""
    p = step.params
    match step.fault:
        case "set_position":
            target.set_position(
                str(p["account"]),
                int(p["conid"]),
                float(p["quantity"]),
                opt_float(p.get("avg_cost")),
            )
        case "remove_position":
            target.remove_position(str(p["account"]), int(p["conid"]))
        case "set_spot":
            target.set_spot(int(p["conid"]), float(p["price"]))
        case _:
            return False
    return True


def opt_float(value: Any) -> float | None:
    """A fault parameter that may be absent (None) as a float."""
    return None if value is None else float(value)


async def run_fault_script(target: FaultTarget, steps: Iterable[FaultStep], clock: Clock) -> None:
    """Apply every step at its time on ``clock`` (relative to the call)."""
    start = clock.monotonic()
    for step in sorted(steps, key=lambda s: s.at):
        await clock.sleep_until(start + step.at)
        log.info("fault script at %.1fs: %s %s", step.at, step.fault, dict(step.params))
        await apply_fault(target, step)
