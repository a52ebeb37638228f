"""The demo portfolios: SPY stock and options, the same plus ES futures options, two accounts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from ibkr_bridge.sim.portfolio._calendar import aware, resolve_expiry
from ibkr_bridge.sim.portfolio._portfolio import Portfolio
from ibkr_bridge.sim.portfolio._records import DEFAULT_ACCOUNT, Instrument, Position, Right

SPY_CONID: Final = 756733
ES_CONID: Final = 637533641
#: The second account of :func:`two_account_portfolio` (the first is DEFAULT_ACCOUNT).
SECOND_ACCOUNT: Final = "DU7654321"


def _spy_part(as_of: datetime) -> tuple[list[Instrument], list[Position]]:
    spy = Instrument(SPY_CONID, "SPY", "STK", primary_exchange="ARCA")
    near = resolve_expiry("+30d", as_of)
    far = resolve_expiry("+60d", as_of)

    def option(conid: int, expiry: str, strike: float, right: Right) -> Instrument:
        return Instrument(
            conid,
            "SPY",
            "OPT",
            expiry=expiry,
            strike=strike,
            right=right,
            multiplier=100.0,
            underlying_conid=SPY_CONID,
        )

    call_near = option(800000101, near, 600.0, "C")
    put_near = option(800000102, near, 580.0, "P")
    call_far = option(800000103, far, 620.0, "C")
    positions = [
        Position(DEFAULT_ACCOUNT, spy, 100.0, 585.25),
        Position(DEFAULT_ACCOUNT, call_near, 2.0, 1210.0),
        Position(DEFAULT_ACCOUNT, put_near, -3.0, 905.5),
        Position(DEFAULT_ACCOUNT, call_far, 1.0, 640.0),
    ]
    return [spy, call_near, put_near, call_far], positions


def single_underlying_portfolio(as_of: datetime | None = None, seed: int | None = 0) -> Portfolio:
    """SPY only: 100 shares, two long calls and three short puts (expiries relative to as_of)."""
    when = aware(as_of) if as_of is not None else datetime.now(UTC)
    instruments, positions = _spy_part(when)
    return Portfolio(
        [DEFAULT_ACCOUNT],
        instruments,
        positions,
        spots={SPY_CONID: 600.0},
        volatilities={SPY_CONID: 0.18},
        seed=seed,
        as_of=when,
    )


def _es_part(as_of: datetime) -> tuple[Instrument, Instrument, Instrument]:
    """The ES future (multiplier 50) and a call and a put on it, 45 days out."""
    es = Instrument(
        ES_CONID,
        "ES",
        "FUT",
        exchange="CME",
        expiry=resolve_expiry("+110d", as_of),
        multiplier=50.0,
    )
    fop_expiry = resolve_expiry("+45d", as_of)

    def fop(conid: int, strike: float, right: Right) -> Instrument:
        return Instrument(
            conid,
            "ES",
            "FOP",
            exchange="CME",
            expiry=fop_expiry,
            strike=strike,
            right=right,
            multiplier=50.0,
            underlying_conid=ES_CONID,
        )

    return es, fop(800000201, 6100.0, "C"), fop(800000202, 5800.0, "P")


def default_portfolio(as_of: datetime | None = None, seed: int | None = 0) -> Portfolio:
    """The demo: the SPY book plus ES futures options (multiplier 50) on one account."""
    when = aware(as_of) if as_of is not None else datetime.now(UTC)
    instruments, positions = _spy_part(when)
    es, es_call, es_put = _es_part(when)
    instruments += [es, es_call, es_put]
    positions += [
        Position(DEFAULT_ACCOUNT, es_call, -1.0, 5250.0),
        Position(DEFAULT_ACCOUNT, es_put, 2.0, 2600.0),
    ]
    return Portfolio(
        [DEFAULT_ACCOUNT],
        instruments,
        positions,
        spots={SPY_CONID: 600.0, ES_CONID: 6000.0},
        volatilities={SPY_CONID: 0.18, ES_CONID: 0.16},
        seed=seed,
        as_of=when,
    )


def two_account_portfolio(as_of: datetime | None = None, seed: int | None = 0) -> Portfolio:
    """Two accounts under one login: stocks, equity and futures options, futures, shorts.

    DEFAULT_ACCOUNT holds the SPY book (long stock, long calls, short puts) and is short
    one ES call; SECOND_ACCOUNT is short SPY stock, long ES puts and one ES future, and
    holds the near SPY call too (one contract in both accounts: one market-data stream).
    """
    when = aware(as_of) if as_of is not None else datetime.now(UTC)
    instruments, positions = _spy_part(when)
    call_near = instruments[1]
    es, es_call, es_put = _es_part(when)
    instruments += [es, es_call, es_put]
    spy = instruments[0]
    positions += [
        Position(DEFAULT_ACCOUNT, es_call, -1.0, 5250.0),
        Position(SECOND_ACCOUNT, spy, -50.0, 590.0),
        Position(SECOND_ACCOUNT, call_near, 3.0, 1180.0),
        Position(SECOND_ACCOUNT, es_put, 2.0, 2600.0),
        Position(SECOND_ACCOUNT, es, 1.0, 300_000.0),
    ]
    return Portfolio(
        [DEFAULT_ACCOUNT, SECOND_ACCOUNT],
        instruments,
        positions,
        spots={SPY_CONID: 600.0, ES_CONID: 6000.0},
        volatilities={SPY_CONID: 0.18, ES_CONID: 0.16},
        seed=seed,
        as_of=when,
    )
