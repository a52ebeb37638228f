"""The one staleness rule (greeks.judge_legs) and aggregate's ``omit``, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ibkr_bridge.core.greeks import GreeksRule, Leg, LegGreeks, aggregate, judge_legs

RULE = GreeksRule(stale_after=15.0, leg_grace=30.0)
NOW = datetime(2026, 3, 10, 18, 0, tzinfo=UTC)


def leg(conid: int, age: float | None, waited: float = 100.0) -> LegGreeks:
    return LegGreeks(conid=conid, name=f"OPT{conid}", age=age, waited=waited)


def test_current_legs_write_and_nothing_is_named() -> None:
    verdict = judge_legs([leg(1, 0.0), leg(2, 15.0)], RULE)
    assert (verdict.write, verdict.missing, verdict.stale, verdict.reason) == (
        True,
        (),
        False,
        None,
    )


def test_a_leg_without_greeks_waits_out_its_grace_then_is_missing() -> None:
    waiting = judge_legs([leg(1, 1.0), leg(2, None, waited=30.0)], RULE)
    # frozenset == set holds; mypy's strict equality allows it, but not inside a tuple.
    assert (waiting.write, waiting.waiting, waiting.missing) == (False, {2}, ())  # type: ignore[comparison-overlap]
    missing = judge_legs([leg(1, 1.0), leg(2, None, waited=30.5)], RULE)
    assert not missing.write
    assert [p.conid for p in missing.missing] == [2]
    assert "no Greeks 30 s after" in missing.missing[0].why
    assert missing.stale is False  # never had Greeks: missing, not stale
    assert missing.reason is not None
    assert "OPT2 (conid 2)" in missing.reason


def test_old_greeks_are_stale_and_missing() -> None:
    verdict = judge_legs([leg(1, 1.0), leg(2, 15.5)], RULE)
    assert (verdict.write, verdict.stale) == (False, True)
    assert "Greeks 16 s old (BRIDGE_STALE_AFTER 15 s)" in verdict.missing[0].why


def test_a_broken_farm_makes_every_leg_missing() -> None:
    verdict = judge_legs([leg(1, 0.0), leg(2, None, waited=1.0)], RULE, broken_farms={"usopt"})
    assert verdict.stale
    assert [p.conid for p in verdict.missing] == [1, 2]
    assert all("farm reported broken (usopt)" in p.why for p in verdict.missing)


def test_partial_writes_with_the_missing_legs_omitted_but_not_while_one_waits() -> None:
    partial = GreeksRule(stale_after=15.0, leg_grace=30.0, partial=True)
    verdict = judge_legs([leg(1, 1.0), leg(2, 20.0)], partial)
    # frozenset == set holds; mypy's strict equality allows it, but not inside a tuple.
    assert (verdict.write, verdict.omit) == (True, {2})  # type: ignore[comparison-overlap]
    assert verdict.reason is not None
    assert "BRIDGE_MISSING_LEGS=partial" in verdict.reason
    waiting = judge_legs([leg(1, 1.0), leg(2, 20.0), leg(3, None, waited=1.0)], partial)
    assert (waiting.write, waiting.omit) == (False, frozenset())


def test_the_skip_reason_does_not_change_as_the_legs_age() -> None:
    # One "skipped" event per episode: the reason names the legs, not their ages.
    first = judge_legs([leg(2, 16.0)], RULE)
    later = judge_legs([leg(2, 600.0)], RULE)
    assert first.reason == later.reason


def test_aggregate_counts_an_omitted_leg_but_never_sums_it() -> None:
    legs = [
        Leg(conid=1, symbol="SPY", sec_type="STK", quantity=100),
        Leg(conid=2, symbol="SPY", sec_type="OPT", quantity=2, multiplier=100.0, delta=0.5,
            gamma=0.01, vega=0.2, theta=-0.1),
        Leg(conid=3, symbol="SPY", sec_type="OPT", quantity=1, multiplier=100.0, delta=0.3,
            gamma=0.02, vega=0.3, theta=-0.2),
    ]  # fmt: skip
    (row,) = aggregate(legs, account="DU1", timestamp=NOW, api_mode="SOCKET", omit={3})
    assert row.delta == pytest.approx(100 + 2 * 100 * 0.5)
    assert row.gamma == pytest.approx(2 * 100 * 0.01)
    assert (row.legs, row.legs_missing) == (3, 1)
