"""Print the table in docs/greeks.md: the bridge's model Greeks against QuantLib's.

    python examples/model_vs_quantlib.py          # the Markdown table
    python examples/model_vs_quantlib.py --write  # and put it into docs/greeks.md

QuantLib (``pip install QuantLib``, a test dependency) is an independent implementation:
its AnalyticEuropeanEngine with a Black-Scholes-Merton process (OPT) or a Black process
(FOP), flat continuously compounded curves, Actual/365 Fixed and whole days to expiry. The
closed forms evaluated with 50 significant digits (mpmath) settle which of the two is
closer where they differ (far out of the money, QuantLib's normal distribution is the less
accurate one).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

import mpmath  # type: ignore[import-untyped]
import QuantLib as ql  # type: ignore[import-untyped]

from ibkr_bridge.core import pricing

DOC: Final = Path(__file__).resolve().parents[1] / "docs" / "greeks.md"
BEGIN: Final = "<!-- model-vs-quantlib:begin -->"
END: Final = "<!-- model-vs-quantlib:end -->"

# (sec_type, underlying, strike, days, vol, rate, right)
CASES: Final = (
    ("OPT", 500.0, 500.0, 30, 0.20, 0.04, "C"),
    ("OPT", 500.0, 450.0, 30, 0.35, 0.04, "P"),
    ("OPT", 150.0, 180.0, 400, 0.45, 0.05, "C"),
    ("OPT", 4200.0, 4000.0, 2, 0.15, 0.03, "P"),
    ("FOP", 5050.0, 5100.0, 60, 0.18, 0.04, "C"),
    ("FOP", 75.0, 70.0, 20, 0.40, 0.05, "P"),
)
NAMES: Final = ("price", "delta", "gamma", "vega", "theta")


def quantlib(
    sec_type: str, s: float, k: float, days: int, v: float, r: float, right: str
) -> tuple[float, ...]:
    today = ql.Date(1, 3, 2027)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    spot = ql.QuoteHandle(ql.SimpleQuote(s))
    rts = ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc, ql.Continuous))
    qts = ql.YieldTermStructureHandle(ql.FlatForward(today, 0.0, dc, ql.Continuous))
    vts = ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), v, dc))
    process = (
        ql.BlackProcess(spot, rts, vts)
        if sec_type == "FOP"
        else ql.BlackScholesMertonProcess(spot, qts, rts, vts)
    )
    kind = ql.Option.Call if right == "C" else ql.Option.Put
    option = ql.VanillaOption(ql.PlainVanillaPayoff(kind, k), ql.EuropeanExercise(today + days))
    option.setPricingEngine(ql.AnalyticEuropeanEngine(process))
    return (option.NPV(), option.delta(), option.gamma(), option.vega() / 100, option.thetaPerDay())


def exact(
    sec_type: str, s: float, k: float, days: int, v: float, r: float, right: str
) -> tuple[float, ...]:
    """The closed forms with 50 significant digits, rounded to doubles at the end."""
    mp = mpmath.mp
    mp.dps = 50
    S, K, T, V, R = (mpmath.mpf(x) for x in (s, k, days, v, r))
    T /= 365
    carry = R if sec_type == "FOP" else mpmath.mpf(0)  # Black-76: zero cost of carry
    sd = V * mpmath.sqrt(T)
    d1 = (mpmath.log(S / K) + (R - carry + V * V / 2) * T) / sd
    d2 = d1 - sd
    dq, dr = mpmath.exp(-carry * T), mpmath.exp(-R * T)
    n1 = mpmath.npdf(d1)
    sign = 1 if right == "C" else -1
    price = sign * (S * dq * mpmath.ncdf(sign * d1) - K * dr * mpmath.ncdf(sign * d2))
    delta = sign * dq * mpmath.ncdf(sign * d1)
    gamma = dq * n1 / (S * sd)
    vega = S * dq * n1 * mpmath.sqrt(T) / 100
    theta = (
        -S * dq * n1 * V / (2 * mpmath.sqrt(T))
        - sign * R * K * dr * mpmath.ncdf(sign * d2)
        + sign * carry * S * dq * mpmath.ncdf(sign * d1)
    ) / 365
    return tuple(float(x) for x in (price, delta, gamma, vega, theta))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def table() -> str:
    lines = [
        "| contract | model | figure | bridge | QuantLib | 50 digits | bridge vs QuantLib "
        "| bridge vs 50 digits | QuantLib vs 50 digits |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for sec_type, s, k, days, v, r, right in CASES:
        model: pricing.Model = "black76" if sec_type == "FOP" else "black_scholes"
        ours = pricing.greeks(model, s, k, days / 365, v, r, "C" if right == "C" else "P")
        assert ours is not None
        theirs = quantlib(sec_type, s, k, days, v, r, right)
        ref = exact(sec_type, s, k, days, v, r, right)
        label = f"{sec_type} {right} K={k:g} on {s:g}, {days} d, vol {v:.0%}, r {r:.0%}"
        for name, want, best in zip(NAMES, theirs, ref, strict=True):
            got = getattr(ours, name)
            lines.append(
                f"| {label} | {model} | {name} | {got:.12g} | {want:.12g} | {best:.12g} "
                f"| {_rel(got, want):.1e} | {_rel(got, best):.1e} | {_rel(want, best):.1e} |"
            )
            label = ""
    return "\n".join(lines)


def render(doc: str) -> str:
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    print(table())
    if "--write" in sys.argv[1:]:
        DOC.write_text(render(DOC.read_text()))
