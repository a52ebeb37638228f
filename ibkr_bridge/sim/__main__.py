"""``python -m ibkr_bridge.sim``: run a simulator in the foreground.

    python -m ibkr_bridge.sim socket --port 4001 --portfolio examples/portfolio.json \\
        --faults script.json --seed 1
    python -m ibkr_bridge.sim socket --book two-accounts
    python -m ibkr_bridge.sim portal --port 5001 --cert-dir ~/.ibkr-sim-cert

Subcommands name the API simulated (``socket`` is the TWS API / IB Gateway, ``portal`` the
Client Portal Web API gateway over HTTPS). Each prints one ``listening ...`` line on stdout
once it accepts connections (the port, and for ``portal`` the URL and the certificate to
trust with ``IBKR_GATEWAY_CA``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

from ibkr_bridge.sim.faults import FaultScriptError, load_fault_script
from ibkr_bridge.sim.portfolio import (
    Portfolio,
    default_portfolio,
    load_portfolio,
    single_underlying_portfolio,
    two_account_portfolio,
)
from ibkr_bridge.sim.tws import TwsSimulator

log = logging.getLogger("ibkr_bridge.sim")

#: The built-in books ``socket --book`` picks by name (``demo`` when neither it nor
#: ``--portfolio`` is given).
BOOKS: dict[str, Callable[[datetime | None, int | None], Portfolio]] = {
    "demo": default_portfolio,
    "spy": single_underlying_portfolio,
    "two-accounts": two_account_portfolio,
}


def _simulator_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    port: int,
) -> argparse.ArgumentParser:
    """A subcommand with the options both simulators take (their default ports differ)."""
    sub = commands.add_parser(name, help=summary)
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sub.add_argument("--port", type=int, default=port, help=f"port ({port}; 0 picks a free one)")
    sub.add_argument("--portfolio", help="portfolio JSON/TOML file (default: built-in demo)")
    sub.add_argument("--faults", help="fault script JSON file")
    sub.add_argument("--seed", type=int, default=None, help="random-walk seed")
    return sub


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ibkr_bridge.sim", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    socket = _simulator_parser(
        commands, "socket", "IB Gateway: the TWS API socket protocol", port=4001
    )
    socket.add_argument(
        "--tick-interval", type=float, default=1.0, help="seconds between ticks (1.0)"
    )
    socket.add_argument(
        "--book",
        choices=sorted(BOOKS),
        help="a built-in book instead of --portfolio: demo (the default; SPY and ES options), "
        "spy (SPY only), two-accounts (two managed accounts, one contract held in both)",
    )
    portal = _simulator_parser(
        commands, "portal", "Client Portal Web API gateway over HTTPS", port=5001
    )
    portal.add_argument("--cert-dir", help="keep the self-signed certificate here across restarts")
    portal.add_argument("--no-tls", action="store_true", help="plain HTTP (tests only)")
    portal.add_argument(
        "--nightly-reset", help="HH:MM New York time at which the session ends each night"
    )
    portal.add_argument(
        "--nightly-needs-human",
        action="store_true",
        help="after the nightly reset only a human login (2FA) restores the session",
    )
    return parser


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for a clean shutdown of the running simulator."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows has no signal handlers
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _run_portal(args: argparse.Namespace, portfolio: Portfolio) -> None:
    from datetime import time

    from ibkr_bridge.sim.portal import PortalSimulator, load_portal_fault_script, serve_portal

    faults = load_portal_fault_script(args.faults) if args.faults else ()
    nightly = None
    if args.nightly_reset:
        hour, _, minute = args.nightly_reset.partition(":")
        nightly = time(int(hour), int(minute or 0))
    stop = _stop_on_signals()

    def ready(sim: PortalSimulator) -> None:
        print(f"listening {sim.url} ca {sim.ca_path}", flush=True)

    await serve_portal(
        portfolio,
        host=args.host,
        port=args.port,
        tls=not args.no_tls,
        cert_dir=args.cert_dir,
        faults=faults,
        nightly_reset=nightly,
        nightly_needs_human=args.nightly_needs_human,
        on_ready=ready,
        stop=stop,
    )


async def _run_socket(args: argparse.Namespace, portfolio: Portfolio) -> None:
    faults = load_fault_script(args.faults) if args.faults else ()
    sim = TwsSimulator(
        portfolio,
        host=args.host,
        port=args.port,
        seed=args.seed,
        tick_interval=args.tick_interval,
        faults=faults,
    )
    stop = _stop_on_signals()
    async with sim:
        log.info(
            "IB Gateway simulator on %s:%d, accounts %s", args.host, sim.port, portfolio.accounts
        )
        print(f"listening {args.host}:{sim.port}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    book = getattr(args, "book", None)
    if book is not None and args.portfolio:
        log.error("--book and --portfolio are alternatives: give one")
        return 2
    try:
        seed = args.seed if args.seed is not None else 0
        portfolio = (
            load_portfolio(args.portfolio, seed=args.seed)
            if args.portfolio
            else BOOKS[book or "demo"](None, seed)
        )
        if args.command == "socket":
            asyncio.run(_run_socket(args, portfolio))
        else:
            asyncio.run(_run_portal(args, portfolio))
    except (OSError, ValueError, FaultScriptError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
