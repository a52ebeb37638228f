"""Loading a portfolio from a mapping or a ``.json`` or ``.toml`` file (``examples/``)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

from ibkr_bridge.sim.portfolio._calendar import aware, resolve_expiry
from ibkr_bridge.sim.portfolio._portfolio import Portfolio
from ibkr_bridge.sim.portfolio._records import DEFAULT_ACCOUNT, Instrument, Position

_INSTRUMENT_KEYS: Final = frozenset(
    {
        "conid",
        "symbol",
        "sec_type",
        "currency",
        "exchange",
        "primary_exchange",
        "expiry",
        "strike",
        "right",
        "multiplier",
        "underlying_conid",
        "local_symbol",
        "trading_class",
    }
)


def _instrument_from_dict(data: Mapping[str, Any], as_of: datetime) -> Instrument:
    unknown = set(data) - _INSTRUMENT_KEYS - {"spot", "volatility", "_comment"}
    if unknown:
        raise ValueError(f"unknown instrument keys {sorted(unknown)} in {dict(data)}")
    kwargs = {k: v for k, v in data.items() if k in _INSTRUMENT_KEYS}
    if kwargs.get("expiry") is not None:
        kwargs["expiry"] = resolve_expiry(str(kwargs["expiry"]), as_of)
    for key in ("strike", "multiplier"):
        if kwargs.get(key) is not None:
            kwargs[key] = float(kwargs[key])
    return Instrument(**kwargs)


def portfolio_from_dict(
    data: Mapping[str, Any], *, as_of: datetime | None = None, seed: int | None = None
) -> Portfolio:
    """Build a portfolio from the documented mapping (see ``examples/portfolio.json``)."""
    when = aware(as_of) if as_of is not None else datetime.now(UTC)
    accounts = [str(a) for a in data.get("accounts", [DEFAULT_ACCOUNT])]
    instruments = [_instrument_from_dict(d, when) for d in data.get("instruments", [])]
    by_conid = {i.conid: i for i in instruments}
    spots = {int(d["conid"]): float(d["spot"]) for d in data.get("instruments", []) if "spot" in d}
    vols = {
        int(d["conid"]): float(d["volatility"])
        for d in data.get("instruments", [])
        if "volatility" in d
    }
    positions = []
    for entry in data.get("positions", []):
        conid = int(entry["conid"])
        if conid not in by_conid:
            raise ValueError(f"position names unknown conid {conid}")
        account = str(entry.get("account", accounts[0]))
        positions.append(
            Position(account, by_conid[conid], float(entry["quantity"]), float(entry["avg_cost"]))
        )
    cash = {str(k): float(v) for k, v in cast(Mapping[str, Any], data.get("cash", {})).items()}
    return Portfolio(
        accounts,
        instruments,
        positions,
        spots=spots,
        volatilities=vols,
        rate=float(data.get("rate", 0.04)),
        seed=seed if seed is not None else data.get("seed", 0),
        as_of=when,
        cash=cash,
    )


def load_portfolio(
    path: str | Path, *, as_of: datetime | None = None, seed: int | None = None
) -> Portfolio:
    """Read a portfolio from a ``.json`` or ``.toml`` file."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix.lower() == ".toml":
        data: Any = tomllib.loads(raw.decode("utf-8"))
    else:
        data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object at the top level")
    return portfolio_from_dict(data, as_of=as_of, seed=seed)
