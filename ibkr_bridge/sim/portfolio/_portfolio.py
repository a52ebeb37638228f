"""The mutable portfolio a simulator owns: accounts, instruments, positions, prices, listeners.

Options are valued by :mod:`._valuation` (Black-Scholes, Black-76 for FOP); underlyings
move by the random walk of :mod:`._walk`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from ibkr_bridge.sim.portfolio._calendar import aware
from ibkr_bridge.sim.portfolio._records import (
    Instrument,
    Listener,
    PortfolioSnapshot,
    Position,
    PositionChange,
    check_underlyings,
    cost_multiplier,
    select_instruments,
)
from ibkr_bridge.sim.portfolio._valuation import Valuation
from ibkr_bridge.sim.portfolio._walk import walk_step


class Portfolio(Valuation):
    """The mutable portfolio a simulator owns.

    Option instruments must have a known underlying with a spot price. Listeners added
    with :meth:`subscribe` hear about every position change (the simulators push them to
    connected clients).
    """

    def __init__(
        self,
        accounts: Iterable[str],
        instruments: Iterable[Instrument] = (),
        positions: Iterable[Position] = (),
        spots: Mapping[int, float] | None = None,
        volatilities: Mapping[int, float] | None = None,
        rate: float = 0.04,
        seed: int | None = 0,
        as_of: datetime | None = None,
        cash: Mapping[str, float] | None = None,
        default_volatility: float = 0.2,
    ) -> None:
        self._accounts = tuple(accounts)
        if not self._accounts:
            raise ValueError("a portfolio needs at least one account")
        self._instruments: dict[int, Instrument] = {}
        self._positions: dict[tuple[str, int], Position] = {}
        self._spots: dict[int, float] = {}
        self._vols: dict[int, float] = {}
        self._default_vol = default_volatility
        self.rate = rate
        self._rng = random.Random(seed)
        self._as_of = aware(as_of) if as_of is not None else datetime.now(UTC)
        self._cash = {acct: 100_000.0 for acct in self._accounts}
        self._cash.update(cash or {})
        self._listeners: list[Listener] = []
        for inst in instruments:
            self._register(inst)
        for pos in positions:
            self._register(pos.instrument)
        for conid, spot in (spots or {}).items():
            self.set_spot(conid, spot)
        for conid, vol in (volatilities or {}).items():
            self.set_volatility(conid, vol)
        for pos in positions:
            self._check_account(pos.account)
            if pos.quantity != 0:
                self._positions[(pos.account, pos.conid)] = pos
        check_underlyings(self._instruments.values(), self._spots)

    @property
    def accounts(self) -> tuple[str, ...]:
        return self._accounts

    @property
    def as_of(self) -> datetime:
        """The valuation time used when a method is called without ``now``."""
        return self._as_of

    def set_time(self, now: datetime) -> None:
        self._as_of = aware(now)

    def _register(self, inst: Instrument) -> None:
        known = self._instruments.get(inst.conid)
        if known is not None and known != inst:
            raise ValueError(f"conid {inst.conid} already names {known}")
        self._instruments[inst.conid] = inst

    def add_instrument(
        self, instrument: Instrument, spot: float | None = None, volatility: float | None = None
    ) -> None:
        """Make an instrument known (an underlying needs a ``spot``)."""
        self._register(instrument)
        if spot is not None:
            self.set_spot(instrument.conid, spot)
        if volatility is not None:
            self.set_volatility(instrument.conid, volatility)
        if instrument.is_option:
            check_underlyings(self._instruments.values(), self._spots)

    def _check_account(self, account: str) -> None:
        if account not in self._accounts:
            raise ValueError(f"unknown account {account!r}")

    def instruments(self) -> tuple[Instrument, ...]:
        return tuple(self._instruments.values())

    def instrument(self, conid: int) -> Instrument:
        """The instrument with this conid (``KeyError`` if unknown)."""
        return self._instruments[conid]

    def find_instruments(
        self,
        *,
        symbol: str | None = None,
        sec_type: str | None = None,
        expiry: str | None = None,
        strike: float | None = None,
        right: str | None = None,
        currency: str | None = None,
        multiplier: float | None = None,
        local_symbol: str | None = None,
        trading_class: str | None = None,
    ) -> list[Instrument]:
        """Instruments matching every given (non-empty) field.

        ``expiry`` matches by prefix, so ``"202603"`` finds every March 2026 expiry;
        ``right`` accepts ``CALL``/``PUT`` too, as IBKR does.
        """
        return select_instruments(
            self._instruments.values(),
            symbol=symbol,
            sec_type=sec_type,
            expiry=expiry,
            strike=strike,
            right=right,
            currency=currency,
            multiplier=multiplier,
            local_symbol=local_symbol,
            trading_class=trading_class,
        )

    def positions(self, account: str | None = None) -> tuple[Position, ...]:
        return tuple(p for p in self._positions.values() if account is None or p.account == account)

    def position(self, account: str, conid: int) -> Position | None:
        return self._positions.get((account, conid))

    def set_position(
        self,
        account: str,
        instrument: Instrument | int,
        quantity: float,
        avg_cost: float | None = None,
    ) -> Position | None:
        """Open, change or (with ``quantity == 0``) close a position; listeners are told.

        Without ``avg_cost`` an existing position keeps its cost and a new one costs the
        current price (x multiplier for derivatives).
        """
        self._check_account(account)
        if isinstance(instrument, Instrument):
            self.add_instrument(instrument)
            inst = instrument
        else:
            inst = self.instrument(instrument)
        key = (account, inst.conid)
        before = self._positions.get(key)
        after: Position | None = None
        if quantity == 0:
            self._positions.pop(key, None)
        else:
            if avg_cost is None:
                avg_cost = (
                    before.avg_cost
                    if before is not None
                    else self.price(inst.conid) * cost_multiplier(inst)
                )
            after = Position(account, inst, float(quantity), float(avg_cost))
            self._positions[key] = after
        if before != after:
            self._notify(PositionChange(account, inst.conid, before, after))
        return after

    def remove_position(self, account: str, conid: int) -> Position | None:
        """Close a position; returns what was removed (None if there was none)."""
        before = self._positions.get((account, conid))
        if before is not None:
            self.set_position(account, conid, 0)
        return before

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every position change; returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, change: PositionChange) -> None:
        for listener in list(self._listeners):
            listener(change)

    def cash(self, account: str) -> float:
        return self._cash.get(account, 0.0)

    def underlying_conid(self, conid: int) -> int:
        """The conid whose spot drives this instrument (itself for STK/FUT)."""
        inst = self.instrument(conid)
        return inst.underlying_conid if inst.underlying_conid is not None else conid

    def spot(self, conid: int) -> float:
        """The current price of an underlying (``KeyError`` if it has none)."""
        return self._spots[conid]

    def set_spot(self, conid: int, price: float) -> None:
        if conid not in self._instruments:
            raise KeyError(f"unknown conid {conid}")
        if not (price > 0 and math.isfinite(price)):
            raise ValueError(f"spot must be positive and finite, got {price}")
        self._spots[conid] = float(price)

    def volatility(self, conid: int) -> float:
        """Annualised volatility of the underlying that drives ``conid``."""
        return self._vols.get(self.underlying_conid(conid), self._default_vol)

    def set_volatility(self, conid: int, vol: float) -> None:
        if conid not in self._instruments:
            raise KeyError(f"unknown conid {conid}")
        if not (vol >= 0 and math.isfinite(vol)):
            raise ValueError(f"volatility must be >= 0 and finite, got {vol}")
        self._vols[conid] = float(vol)

    def step(self, dt_seconds: float, now: datetime | None = None) -> None:
        """Move every underlying by one geometric-Brownian step of ``dt_seconds``.

        Zero drift; the volatility is the underlying's own. ``now`` (or ``as_of + dt``)
        becomes the new valuation time.
        """
        walk_step(self._spots, self._vols, self._default_vol, self._rng, dt_seconds)
        self._as_of = aware(now) if now is not None else self._as_of + timedelta(seconds=dt_seconds)

    def reseed(self, seed: int | None) -> None:
        self._rng = random.Random(seed)

    def _now(self, now: datetime | None) -> datetime:
        return aware(now) if now is not None else self._as_of

    def snapshot(self) -> PortfolioSnapshot:
        return PortfolioSnapshot(
            accounts=self._accounts,
            positions=self.positions(),
            instruments=MappingProxyType(dict(self._instruments)),
            spots=MappingProxyType(dict(self._spots)),
            volatilities=MappingProxyType(
                {c: self._vols.get(c, self._default_vol) for c in self._spots}
            ),
            cash=MappingProxyType(dict(self._cash)),
            rate=self.rate,
            as_of=self._as_of,
        )
