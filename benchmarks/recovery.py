"""Recovery times: gateway back -> LIVE, and database back -> buffer empty, in real time.

    python benchmarks/recovery.py                          # both parts, 5 repeats each
    python benchmarks/recovery.py --part gateway --repeats 3
    python benchmarks/recovery.py --part database --rows 20000

The real Bridge (SocketFeed over ib_async, the DurableWriter into PostgreSQL, the system
clock) runs in this process; the IB Gateway simulator runs in a subprocess.

(a) gateway: the simulator subprocess is this script run with ``--child-sim``: a
``TwsSimulator`` with the built-in demo book that obeys ``down`` (close the listener, so
connects are refused, and drop every API session) and ``up`` (listen again) on stdin and
answers with the ``time.monotonic()`` of the moment it happened (CLOCK_MONOTONIC is one
clock for every process of the machine). Each repeat takes the Gateway down for ``--down``
seconds, brings it back and measures, from "accepting again":

- to the bridge's ``-> LIVE`` transition (connected, account picked, positions synced,
  market data subscribed): the reconnect time;
- split into the wait left in the back-off step then in force (up -> the start of the
  attempt that succeeded) and the bridge's own overhead (that attempt -> LIVE).

It runs twice: with ``BRIDGE_BACKOFF`` small (``--small-backoff``, 0.5,1,2 and
``BRIDGE_STEADY_RETRY`` its last step) to show the overhead, and with the defaults (5,10,20,
then every 60 s). Expected: reconnect time <= the back-off step in force + the overhead.

(b) database: a :class:`~ibkr_bridge.testing.TcpProxy` sits in front of PostgreSQL. Each
repeat (a fresh schema, buffer and Bridge, LIVE against the simulator) takes the proxy down,
feeds ``--rows`` Greeks rows straight into ``bridge.sink.submit`` in chunks of ``--chunk``
(the rows are not from ticks: a 5 s cadence would need days to build a large backlog) and
waits until they are durable in the buffer, keeps the database away for ``--down`` seconds,
brings the proxy up and measures, from "up", with ``BRIDGE_RETRY_INTERVAL`` =
``--retry-interval`` (1 s):

- to the breaker's ``-> HALF_OPEN`` transition that led to recovery: the retry wait,
  bounded by the retry interval (reported apart, it is configuration, not work);
- from that ``HALF_OPEN`` to ``-> CLOSED``, which the breaker enters only when the drain
  found the buffer empty (checked at that moment): the drain (schema check, reconnecting,
  then ``drain_buffer``: read, decode, one transaction per batch, cursor commits), with its
  records/s;
- the total, up -> CLOSED with the buffer empty.

Every part prints a line per repeat and a ``median over ...`` line. Exit status 1 when a
correctness check failed (rows missing from the table, the bridge never went LIVE or never
closed the breaker): the figures of that run must not be quoted.

Uses ``IBKR_BRIDGE_TEST_DSN``, ``DATABASE_URL`` or the test server (127.0.0.1:5432), else
an embedded PostgreSQL; works in private schemas that it drops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import attrs

# The sibling script (its directory is sys.path[0] when a script runs): shared helpers.
from cadence import SimProcess, load_average, socket_simulator_args
from drain import make_rows

from ibkr_bridge.config import load_settings
from ibkr_bridge.core.records import ApiEvent, GreeksRow
from ibkr_bridge.service.bridge import Bridge
from ibkr_bridge.testing import TcpProxy, TestDatabase, find_postgres, stop_embedded_postgres

BENCH_ACCOUNT: Final = "DUBENCH01"  # rows fed by the benchmark, told apart from the bridge's
T0: Final = datetime(2020, 1, 6, 14, 30, tzinfo=UTC)


# -- the controllable simulator (child process) ---------------------------------------------


async def serve_sim() -> None:
    """``--child-sim``: a TwsSimulator obeying ``down`` / ``up`` lines on stdin."""
    from ibkr_bridge.sim.portfolio import default_portfolio
    from ibkr_bridge.sim.tws import TwsSimulator

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with TwsSimulator(default_portfolio(seed=1), seed=1) as sim:
        print(f"listening {sim.host}:{sim.port}", flush=True)
        while line := (await stdin.readline()).decode().strip():
            if line == "down":
                await sim.refuse()  # listener closed: connects get ECONNREFUSED
                await sim.restart()  # and every API session is dropped
            elif line == "up":
                await sim.accept_connections()
            else:
                print(f"error unknown command {line!r}", flush=True)
                continue
            print(f"{line} {time.monotonic():.6f}", flush=True)


async def command(sim: SimProcess, what: str, timeout: float = 10.0) -> float:
    """Send ``what`` to the child simulator; the monotonic time at which it was done."""
    await sim.send(what)
    reply = await asyncio.wait_for(sim.lines.get(), timeout)
    name, _, at = reply.partition(" ")
    if name != what:
        raise RuntimeError(f"the simulator answered {reply!r} to {what!r}")
    return float(at)


# -- event log ----------------------------------------------------------------------------


@attrs.frozen
class Seen:
    at: float  # time.monotonic() when the bridge reported it
    event: ApiEvent


class Events:
    """Every api_logs event of a Bridge, stamped on the monotonic clock as it happens."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._changed = asyncio.Event()
        self.hooks: list[Callable[[ApiEvent], None]] = []

    def __call__(self, event: ApiEvent) -> None:
        self.seen.append(Seen(time.monotonic(), event))
        for hook in self.hooks:
            hook(event)
        self._changed.set()

    def transitions(self, machine: str, dest: str, after: float) -> list[Seen]:
        return [
            s
            for s in self.seen
            if s.at >= after
            and s.event.event == "transition"
            and s.event.machine == machine
            and s.event.dest_state == dest
        ]

    async def wait_transition(self, machine: str, dest: str, after: float, timeout: float) -> Seen:
        async def until() -> Seen:
            while True:
                found = self.transitions(machine, dest, after)
                if found:
                    return found[0]
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise Failed(
                f"no {machine} -> {dest} within {timeout:g} s; last events: "
                + "; ".join(s.event.message for s in self.seen[-5:])
            ) from None


class Failed(Exception):
    """A repeat whose figures cannot be used."""


def settings_for(port: int, dsn: str, buffer: Path, extra: Mapping[str, str]) -> dict[str, str]:
    return {
        "IB_API_MODE": "SOCKET",
        "IB_SOCKET_PORT": str(port),
        "DATABASE_URL": dsn,
        "BRIDGE_BUFFER_PATH": str(buffer),
        **extra,
    }


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- (a) the gateway comes back -------------------------------------------------------------


@attrs.frozen
class Reconnect:
    step: float  # the back-off delay in force when the Gateway came back
    wait: float  # up -> start of the attempt that succeeded
    overhead: float  # that attempt -> LIVE
    total: float  # up -> LIVE
    attempts: int  # connect attempts refused while down


async def gateway_part(
    label: str, backoff: Mapping[str, str], args: argparse.Namespace, server: str, tmp: Path
) -> list[Reconnect]:
    sim = await SimProcess.start([sys.executable, __file__, "--child-sim"])
    results: list[Reconnect] = []
    try:
        async with TestDatabase.create(server) as db:
            env = settings_for(sim.port, db.dsn, tmp / f"gateway-{label}.jsonl", backoff)
            bridge = Bridge(load_settings(env, use_dotenv=False))
            events = Events()
            bridge.add_event_callback(events)
            async with bridge:
                await events.wait_transition("connection", "LIVE", 0.0, args.timeout)
                for i in range(args.repeats):
                    await asyncio.sleep(args.settle)
                    r = await one_reconnect(sim, events, args)
                    results.append(r)
                    print(
                        f"gateway, {label} back-off, repeat {i + 1}: down {args.down:g} s "
                        f"({r.attempts} attempts refused), step in force {r.step:g} s; "
                        f"up -> LIVE {r.total:.3f} s = wait {r.wait:.3f} s "
                        f"+ attempt -> LIVE {r.overhead:.3f} s",
                        flush=True,
                    )
    finally:
        await sim.stop()
    return results


async def one_reconnect(sim: SimProcess, events: Events, args: argparse.Namespace) -> Reconnect:
    down = await command(sim, "down")
    await events.wait_transition("connection", "BACKOFF", down, args.timeout)
    await asyncio.sleep(max(0.0, down + args.down - time.monotonic()))
    up = await command(sim, "up")
    live = await events.wait_transition("connection", "LIVE", up, args.timeout + 60.0)
    backoffs = [s for s in events.transitions("connection", "BACKOFF", down) if s.at < up]
    # The attempt that succeeded is the last "connecting ..." before LIVE.
    starts = [
        s
        for s in events.seen
        if down <= s.at <= live.at
        and s.event.event == "connect"
        and "outcome" not in s.event.detail
    ]
    if not backoffs or not starts:
        raise Failed("no back-off or no connect attempt recorded")
    step = float(backoffs[-1].event.detail.get("delay", float("nan")))
    attempt = starts[-1].at
    refused = sum(
        1 for s in events.seen if down <= s.at <= up and s.event.detail.get("outcome") == "failed"
    )
    return Reconnect(
        step=step,
        wait=attempt - up,
        overhead=live.at - attempt,
        total=live.at - up,
        attempts=refused,
    )


def summarize_gateway(label: str, results: list[Reconnect], args: argparse.Namespace) -> str:
    steps = sorted({r.step for r in results})
    bound = all(r.wait <= r.step for r in results)
    return (
        f"median over {len(results)} repeats, gateway down {args.down:g} s, {label} back-off "
        f"(step in force {', '.join(f'{s:g}' for s in steps)} s): "
        f"up -> LIVE {med([r.total for r in results]):.3f} s "
        f"(max {max((r.total for r in results), default=float('nan')):.3f} s) = "
        f"back-off wait {med([r.wait for r in results]):.3f} s + "
        f"attempt -> LIVE {med([r.overhead for r in results]):.3f} s; "
        f"wait <= step in force: {'yes' if bound else 'NO'}"
    )


# -- (b) the database comes back ------------------------------------------------------------


@attrs.frozen
class Recovery:
    outage: float  # proxy down -> up (at least --down; longer if feeding took longer)
    buffered: int  # records drained after "up" (the fed rows plus the bridge's own)
    retry_wait: float  # up -> HALF_OPEN (the probe that succeeded)
    drain: float  # HALF_OPEN -> CLOSED, buffer empty
    total: float  # up -> CLOSED

    @property
    def rate(self) -> float:
        return self.buffered / self.drain if self.drain > 0 else float("nan")


def bench_rows(repeat: int, start: int, count: int) -> list[GreeksRow]:
    return make_rows(start, count, base=T0 + timedelta(days=repeat), account=BENCH_ACCOUNT)


async def one_recovery(
    repeat: int, sim: SimProcess, args: argparse.Namespace, server: str, tmp: Path
) -> Recovery:
    async with TestDatabase.create(server) as db, TcpProxy(*db.server_address()) as proxy:
        env = settings_for(
            sim.port,
            db.proxied_dsn(proxy),
            tmp / f"database-{repeat}.jsonl",
            {"BRIDGE_RETRY_INTERVAL": str(args.retry_interval)},
        )
        bridge = Bridge(load_settings(env, use_dotenv=False))
        events = Events()
        closed_state: list[tuple[bool, int]] = []  # (buffer empty, drained) at -> CLOSED

        def on_event(event: ApiEvent) -> None:
            if event.machine == "breaker" and event.dest_state == "CLOSED":
                stats = bridge.sink.stats
                closed_state.append((bridge.sink.buffer.is_empty, stats.drained))

        events.hooks.append(on_event)
        bridge.add_event_callback(events)
        async with bridge:
            await events.wait_transition("connection", "LIVE", 0.0, args.timeout)
            down = time.monotonic()
            proxy.down()
            futures = [
                bridge.sink.submit(bench_rows(repeat, start, min(args.chunk, args.rows - start)))
                for start in range(0, args.rows, args.chunk)
            ]
            await asyncio.gather(*futures)  # durable: in the buffer, fsync'd
            if bridge.status.breaker == "CLOSED" or bridge.sink.buffer.is_empty:
                raise Failed("the database outage did not open the breaker")
            await asyncio.sleep(max(0.0, down + args.down - time.monotonic()))
            drained_before = bridge.sink.stats.drained
            up = time.monotonic()
            proxy.up()
            closed = await events.wait_transition("breaker", "CLOSED", up, args.timeout + 60.0)
            probes = [
                s for s in events.transitions("breaker", "HALF_OPEN", up) if s.at <= closed.at
            ]
            if not probes:
                raise Failed("CLOSED without a HALF_OPEN probe after up")
            empty, drained_at_close = closed_state[-1]
            if not empty:
                raise Failed("the breaker closed with records still in the buffer")
        fed = await db.fetch(
            "SELECT count(*) FROM portfolio_greeks WHERE account = $1", BENCH_ACCOUNT
        )
        if fed[0][0] != args.rows:
            raise Failed(f"{fed[0][0]} fed rows in the table, expected {args.rows}")
    probe = probes[-1].at
    return Recovery(
        outage=up - down,
        buffered=drained_at_close - drained_before,
        retry_wait=probe - up,
        drain=closed.at - probe,
        total=closed.at - up,
    )


async def database_part(args: argparse.Namespace, server: str, tmp: Path) -> list[Recovery]:
    sim = await SimProcess.start(socket_simulator_args())
    results: list[Recovery] = []
    try:
        for i in range(args.repeats):
            r = await one_recovery(i, sim, args, server, tmp)
            results.append(r)
            print(
                f"database, repeat {i + 1}: {args.rows:,} rows fed during a "
                f"{r.outage:.1f} s outage, "
                f"{r.buffered:,} records drained; up -> CLOSED and buffer empty {r.total:.3f} s "
                f"= retry wait {r.retry_wait:.3f} s (interval {args.retry_interval:g} s) "
                f"+ drain {r.drain:.3f} s ({r.rate:,.0f} records/s)",
                flush=True,
            )
    finally:
        await sim.stop()
    return results


def summarize_database(results: list[Recovery], args: argparse.Namespace) -> str:
    return (
        f"median over {len(results)} repeats, {args.rows:,} rows buffered, retry interval "
        f"{args.retry_interval:g} s: up -> CLOSED and buffer empty "
        f"{med([r.total for r in results]):.3f} s = retry wait "
        f"{med([r.retry_wait for r in results]):.3f} s + drain "
        f"{med([r.drain for r in results]):.3f} s; drain {med([r.rate for r in results]):,.0f} "
        f"records/s"
    )


# -- main -----------------------------------------------------------------------------------


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("both", "gateway", "database"), default="both")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement (5)")
    parser.add_argument("--down", type=float, default=3.0, help="seconds of each outage (3)")
    parser.add_argument(
        "--small-backoff", default="0.5,1,2", help="BRIDGE_BACKOFF of the overhead run"
    )
    parser.add_argument("--settle", type=float, default=2.0, help="seconds LIVE between outages")
    parser.add_argument("--rows", type=int, default=100_000, help="rows buffered (100,000)")
    parser.add_argument("--chunk", type=int, default=1000, help="rows per submit (1000)")
    parser.add_argument(
        "--retry-interval", type=float, default=1.0, help="BRIDGE_RETRY_INTERVAL (1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for any one state (60)"
    )
    parser.add_argument("--child-sim", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_sim:
        logging.basicConfig(level=logging.WARNING)
        await serve_sim()
        return 0
    if args.repeats < 1 or args.rows < 1 or args.chunk < 1:
        parser.error("--repeats, --rows and --chunk must be >= 1")
    # Every outage makes ib_async and the bridge log errors, as they should: not news here.
    logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s")

    print(f"load average {load_average()} before", flush=True)
    server = await find_postgres()
    summaries: list[str] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("both", "gateway"):
            small = {
                "BRIDGE_BACKOFF": args.small_backoff,
                "BRIDGE_STEADY_RETRY": args.small_backoff.split(",")[-1],
            }
            for label, backoff in (("small", small), ("default", {})):
                try:
                    found = await gateway_part(label, backoff, args, server, Path(tmp))
                except Failed as exc:
                    problems.append(f"gateway, {label} back-off: {exc}")
                    continue
                summaries.append(summarize_gateway(label, found, args))
        if args.part in ("both", "database"):
            try:
                recovered = await database_part(args, server, Path(tmp))
            except Failed as exc:
                problems.append(f"database: {exc}")
            else:
                summaries.append(summarize_database(recovered, args))
    stop_embedded_postgres()
    for line in summaries:
        print(line)
    print(f"load average {load_average()} after")
    for problem in problems:
        print(f"INVALID: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
