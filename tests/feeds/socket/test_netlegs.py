"""The SOCKET feed's fast tick path gives exactly the reference path's verdict and rows.

The reference is :func:`session_legs` (frozen Leg records built per position per tick) and
:func:`rows_from_legs`; the fast path is :class:`NetLegs` (records kept per position,
refreshed when the ticker's modelGreeks object changes) and :func:`rows_from_net`. Both
read the same session double over several ticks, with Greeks objects replaced, positions
changed and clocks advanced between them; the rows must be equal bit for bit (``repr``
of every float), the verdicts equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ib_async import Contract, OptionComputation, Position, Ticker

from ibkr_bridge.core.greeks import UNPRICED, GreeksRule
from ibkr_bridge.feeds._rows import TickRows, rows_from_legs, rows_from_net
from ibkr_bridge.feeds.socket._netlegs import NetLegs
from ibkr_bridge.feeds.socket._positions import session_legs
from ibkr_bridge.feeds.socket._session import _Session
from ibkr_bridge.feeds.socket._wire import _Subscription

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
SYMBOLS = ("SPY", "QQQ", "ES")
STOCK_ES = 950.0  # a stock "ES"'s price (Eversource), as the by-symbol map holds it
ACCOUNTS = ("DU1", "DU2", "DU3")
# Every kind of value IB's Greeks take: data, the -2 sentinel, NaN, inf, the unset double.
RAW = st.one_of(
    st.none(),
    st.sampled_from([-2.0, math.nan, math.inf, -math.inf, 1.7976931348623157e308, 0.0, -0.0]),
    st.floats(-3.0, 3.0, allow_nan=False),
    st.floats(-1e200, 1e200, allow_nan=False),
)
# Ages and waits on the rules' boundaries (15 s, 30 s) as well as between them.
SECONDS = st.one_of(st.sampled_from([0.0, 15.0, 30.0]), st.floats(0.0, 60.0))
PRICE = st.one_of(st.none(), st.sampled_from([-1.0, 0.0, math.nan]), st.floats(1.0, 900.0))


@dataclass
class Book:
    """A session double: what session_legs and NetLegs.read use of a _Session."""

    accounts: tuple[str, ...]
    positions: dict[str, list[Position]]
    subs: dict[int, _Subscription] = field(default_factory=dict)
    first_seen: dict[int, float] = field(default_factory=dict)
    under_conids: dict[int, int] = field(default_factory=dict)  # FOP -> its future

    def open_positions(self) -> list[Position]:  # as _Subscriptions.open_positions
        return [p for a in self.accounts for p in self.positions.get(a, []) if p.position != 0]


def contract_for(conid: int, draw: st.DrawFn) -> Contract:
    sec_type = draw(st.sampled_from(["OPT", "OPT", "opt", "FOP", "STK", "ETF", "FUT", "CASH"]))
    option = sec_type.upper() in ("OPT", "FOP")
    return Contract(
        conId=conid,
        secType=sec_type,
        symbol=draw(st.sampled_from(SYMBOLS)),
        localSymbol=draw(st.sampled_from(["", f"L{conid}"])),
        multiplier=draw(st.sampled_from(["", "100", "50", "0", "0.5"])),
        right=draw(st.sampled_from(["C", "P", "CALL", ""])) if option else "",
        strike=draw(st.sampled_from([0.0, 450.0, 600.0, 5000.0])) if option else 0.0,
        lastTradeDateOrContractMonth=(
            draw(st.sampled_from(["20270115", "20261218", "202703", "20261201", ""]))
            if option or sec_type == "FUT"
            else ""
        ),
    )


def greeks(draw: st.DrawFn) -> OptionComputation | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    return OptionComputation(
        tickAttrib=0,
        impliedVol=draw(st.one_of(st.none(), st.sampled_from([-1.0, 0.0]), st.floats(0.05, 1.0))),
        delta=draw(RAW),
        gamma=draw(RAW),
        vega=draw(RAW),
        theta=draw(RAW),
        undPrice=draw(PRICE),
    )


def quote(ticker: Ticker, draw: st.DrawFn) -> None:
    ticker.bid, ticker.ask, ticker.last = (draw(PRICE) or math.nan for _ in range(3))
    ticker.close = draw(PRICE) or math.nan


def quantity(draw: st.DrawFn) -> float:
    size = draw(st.sampled_from([1.0, 2.0, 5.0, 10.0, 0.5, 300.0, 1e9, 0.0]))
    return size if draw(st.booleans()) else -size  # shorts


@st.composite
def books(draw: st.DrawFn) -> tuple[Book, float]:
    mono = 1000.0
    accounts = ACCOUNTS[: draw(st.integers(1, 3))]
    contracts = [contract_for(100 + i, draw) for i in range(draw(st.integers(0, 10)))]
    book = Book(accounts=accounts, positions={})
    for account in accounts:
        held = draw(st.lists(st.sampled_from(contracts), unique_by=id)) if contracts else []
        book.positions[account] = [Position(account, c, quantity(draw), 1.0) for c in held]
    futures = [c.conId for c in contracts if c.secType == "FUT"]
    for c in contracts:
        if c.secType == "FOP" and draw(st.booleans()):
            # Its future as IB names it: one in the book, none (0), or one not streamed.
            book.under_conids[c.conId] = draw(st.sampled_from([*futures, 0, 999]))
    for c in contracts:
        if draw(st.integers(0, 5)) == 0:
            continue  # unresolved: no stream, waits from when it was first seen
        ticker = Ticker(contract=c)
        sub = _Subscription(c, ticker, 1, mono - draw(SECONDS))
        book.subs[c.conId] = sub
        set_greeks(sub, draw, mono)
        quote(ticker, draw)
    return book, mono


def set_greeks(sub: _Subscription, draw: st.DrawFn, mono: float) -> None:
    new = greeks(draw)
    sub.ticker.modelGreeks = new
    if new is not None:
        sub.greeks = new
        sub.greeks_at = mono - draw(SECONDS)


@st.composite
def next_tick(draw: st.DrawFn, book: Book, mono: float) -> float:
    """What may change between two ticks: Greeks objects, quotes, positions, the clock."""
    mono += draw(st.sampled_from([0.0, 5.0, 20.0]))
    for sub in book.subs.values():
        if draw(st.booleans()):
            set_greeks(sub, draw, mono)
        if draw(st.booleans()):
            quote(sub.ticker, draw)
    for held in book.positions.values():
        for i, pos in enumerate(held):
            if draw(st.integers(0, 4)) == 0:
                held[i] = pos._replace(position=quantity(draw))
    return mono


RULES = st.builds(
    GreeksRule,
    stale_after=st.sampled_from([15.0, 30.0]),
    leg_grace=st.sampled_from([0.0, 30.0]),
    partial=st.booleans(),
    model=st.booleans(),
    risk_free_rate=st.sampled_from([0.0, 0.04]),
    position_rows=st.booleans(),
)


def both(
    book: Book,
    mono: float,
    rule: GreeksRule,
    farms: set[str],
    fast: NetLegs,
    now: datetime,
    prices: dict[str, float],
) -> tuple[TickRows, TickRows]:
    accounts = book.accounts
    common = {
        "account": accounts[0] if len(accounts) == 1 else "",
        "accounts": accounts,
        "now": now,
        "mode": "SOCKET",
        "prices": lambda: prices,
        "broken_farms": farms,
    }
    legs, judged = session_legs(cast(_Session, book), mono)
    reference = rows_from_legs(legs, judged, rule, **common)  # type: ignore[arg-type]
    # As SocketFeed.snapshot reads them: current legs left out, unless a farm is broken
    # or the model may find one it cannot price.
    current = None if farms or rule.model else rule.stale_after
    net, ages, conids = fast.read(book, mono, current=current)
    groups = fast.groups  # as the feed passes them: kept while the positions stay
    fast_rows = rows_from_net(net, ages, rule, judged=conids, groups=groups, **common)  # type: ignore[arg-type]
    return fast_rows, reference


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rule=RULES)
def test_fast_path_equals_the_reference_over_ticks(data: st.DataObject, rule: GreeksRule) -> None:
    book, mono = data.draw(books())
    fast = NetLegs()  # kept across the ticks, as the feed keeps it
    for tick in range(3):
        farms = data.draw(st.sampled_from([set(), set(), {"usfarm"}]))
        prices = data.draw(st.dictionaries(st.sampled_from(SYMBOLS), st.floats(1.0, 900.0)))
        got, want = both(book, mono, rule, farms, fast, NOW, prices)
        assert got.verdict == want.verdict, tick
        assert repr(got.rows) == repr(want.rows), tick
        assert repr(got.positions) == repr(want.positions), tick
        mono = data.draw(next_tick(book, mono))
        # The session passes on some of the new Greeks as they arrive (NetLegs.arrived),
        # as on_tickers does: the next read must give the reference's rows all the same.
        for sub in book.subs.values():
            if sub.ticker.modelGreeks is not None and data.draw(st.booleans()):
                fast.arrived(sub.contract.conId, sub.ticker, sub.ticker.modelGreeks)


def test_the_property_sees_every_case() -> None:
    """The book above reaches what it must compare: model legs, several accounts, partial
    rows, missing legs and per-position rows (a property that never met them proves nothing)."""
    seen: set[str] = set()

    @settings(max_examples=1500, deadline=None, database=None, derandomize=True)
    @given(data=st.data(), rule=RULES)
    def run(data: st.DataObject, rule: GreeksRule) -> None:
        book, mono = data.draw(books())
        # "ES" as a stock's price too (above PRICE's range, so no leg's own price equals it).
        got, want = both(book, mono, rule, set(), NetLegs(), NOW, {"SPY": 600.0, "ES": STOCK_ES})
        assert repr(got.rows) == repr(want.rows)
        rows = want.rows or []
        futures = [p for p in want.positions if p.sec_type in ("FOP", "FUT")]
        # A futures leg never takes the by-symbol (stock) price, in the model or its row.
        assert all(p.underlying_price != STOCK_ES for p in futures)
        seen.update(
            name
            for name, hit in (
                ("model", any(r.legs_model for r in rows)),
                ("accounts", len({r.account for r in rows}) > 1),
                ("missing", any(r.legs_missing for r in rows)),
                ("positions", bool(want.positions)),
                ("skipped", want.rows is None and bool(want.verdict.missing)),
                ("null", any(r.gamma is None for r in rows)),
                ("unpriced", any(p.why == UNPRICED for p in want.verdict.missing)),
                # A futures option of the stock's symbol with its own price in its row.
                ("es_fop", any(p.underlying == "ES" and p.underlying_price for p in futures)),
            )
            if hit
        )

    run()
    assert seen == {
        "model",
        "accounts",
        "missing",
        "positions",
        "skipped",
        "null",
        "unpriced",
        "es_fop",
    }


def test_arrived_refreshes_the_legs_before_the_tick() -> None:
    """New Greeks passed to arrived() are in the legs' terms before the next read (the
    work leaves the tick), for every leg of that conid and no other."""
    spy = Contract(conId=7, secType="OPT", symbol="SPY", multiplier="100", right="C")
    qqq = Contract(conId=8, secType="OPT", symbol="QQQ", multiplier="100", right="P")
    book = Book(
        accounts=("DU1", "DU2"),
        positions={
            "DU1": [Position("DU1", spy, 2.0, 1.0), Position("DU1", qqq, 1.0, 1.0)],
            "DU2": [Position("DU2", spy, -1.0, 1.0)],
        },
    )
    for contract in (spy, qqq):
        book.subs[contract.conId] = _Subscription(contract, Ticker(contract=contract), 1, 0.0)
    fast = NetLegs()
    legs, _, _ = fast.read(book, 1.0)
    assert [leg.terms for leg in legs] == [(None, None, None, None)] * 3
    sub = book.subs[7]
    sub.ticker.modelGreeks = OptionComputation(
        tickAttrib=0, impliedVol=0.2, delta=0.5, gamma=0.01, vega=0.2, theta=-2.0, undPrice=600.0
    )
    fast.arrived(7, sub.ticker, sub.ticker.modelGreeks)
    # Not read again: the terms are already there (theta -2.0 is IB's "not computed").
    assert [(leg.conid, leg.terms, leg.missing) for leg in legs] == [
        (7, (100.0, 2.0, 40.0, None), True),
        (8, (None, None, None, None), True),
        (7, (-50.0, -1.0, -20.0, None), True),
    ]
    assert [leg.price for leg in legs] == [600.0, None, 600.0]
