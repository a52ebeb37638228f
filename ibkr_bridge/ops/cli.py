"""The ``ibkr-bridge`` command line (also ``python -m ibkr_bridge``).

Commands:

``run`` (the default)
    The service: loads the configuration (``.env`` and the environment), makes sure the two
    tables exist, and runs the Bridge until SIGINT or SIGTERM, then stops cleanly.
``check``
    A doctor (:mod:`ibkr_bridge.ops.doctor`): configuration, database and schema, gateway
    (without taking a client id), buffer. A table, or ``--json``.
``schema``
    Prints what the bridge's tables need; ``--apply`` creates and upgrades them additively
    (never changes a type or drops anything); ``--ddl`` prints the DDL.
``buffer status`` / ``buffer drain``
    What the crash-safe buffer holds (and how many records ``.rejected`` keeps); drain it
    into the database now.
``buffer replay-rejected [--apply]``
    What ``<buffer>.rejected`` would send (dry run), or send it through the idempotent path
    and keep only what still fails (:mod:`ibkr_bridge.storage.replay`).
``sim socket|portal``
    Runs an IBKR simulator: ``python -m ibkr_bridge.sim`` (its options follow the name).

Exit codes (:data:`EXIT_OK` ...): 0 ok; 1 a check failed or a runtime failure; 2 bad
configuration or usage (argparse's own 2), including a buffer path that cannot be used as
given (a symlink, a directory, not permitted, a file of an unknown version); 3 the bridge's
tables exist in a shape it cannot write to; 4 the buffer is locked by another running bridge
(for ``replay-rejected``: another replay is running). ``replay-rejected`` exits 1 when anything
stays in ``.rejected``.

Heavy modules are imported by the command that needs them, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ibkr_bridge.config import ConfigError, Settings
from ibkr_bridge.core.errors import SchemaError
from ibkr_bridge.ops.exitcodes import (
    EXIT_CODES_HELP,
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_SCHEMA,
)
from ibkr_bridge.ops.logs import configure_logging
from ibkr_bridge.storage.buffer import (
    BufferFormatError,
    BufferLockedError,
    BufferPathError,
    JsonlBufferError,
)

if TYPE_CHECKING:
    pass

from ibkr_bridge.ops._buffer_cmds import (
    cmd_buffer_drain,
    cmd_buffer_replay_rejected,
    cmd_buffer_status,
)
from ibkr_bridge.ops._common import PROG, _environ, _settings
from ibkr_bridge.ops._schema_cmd import cmd_schema

log = logging.getLogger("ibkr_bridge")

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_SCHEMA",
    "build_parser",
    "cmd_run",
    "main",
    "serve",
]


# --- run -------------------------------------------------------------------------------


async def serve(settings: Settings) -> int:
    """Run the bridge until a signal asks it to stop."""
    from ibkr_bridge.service.bridge import Bridge

    bridge = Bridge(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await bridge.start()
    log.info("ibkr-bridge running in %s mode; stop with Ctrl-C or SIGTERM", settings.api_mode)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await bridge.stop()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level)
    for key in settings.unknown_keys:
        log.warning("unknown setting %s ignored (a typo?)", key)
    try:
        return asyncio.run(serve(settings))
    except SchemaError as exc:
        log.error("%s", exc)
        return EXIT_SCHEMA
    except BufferLockedError as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    except (BufferPathError, BufferFormatError) as exc:
        # A person must fix the path or the file: the unit does not restart on this code.
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    except (OSError, JsonlBufferError) as exc:
        # e.g. a buffer file that cannot be read or created: one clear line, no traceback.
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE


# --- check -----------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from ibkr_bridge.ops.doctor import render_table, run_checks

    report = asyncio.run(run_checks(_environ(args), args.env_file))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        print(render_table(report))
    return report.exit_code


# --- sim -------------------------------------------------------------------------------


def cmd_sim(args: argparse.Namespace) -> int:
    from ibkr_bridge.sim.__main__ import main as sim_main

    return sim_main(["--log-level", args.log_level, args.simulator, *args.sim_args])


# --- parser ----------------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    """Wraps each line of a description; lines starting with a blank are kept as typed."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if not line or line.startswith(" "):
                lines.append(indent + line)
            else:
                lines.append(
                    textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n".join(lines)


def _config_options(parser: argparse.ArgumentParser, *, mode: bool, top: bool = False) -> None:
    # On subcommands the defaults are suppressed, so "ibkr-bridge --env-file x check" keeps x.
    default_env = ".env" if top else argparse.SUPPRESS
    parser.add_argument(
        "--env-file",
        default=default_env,
        metavar="PATH",
        help="dotenv file to read (default .env; the environment wins over it)",
    )
    if mode:
        parser.add_argument(
            "--mode",
            choices=["SOCKET", "PORTAL"],
            default=None if top else argparse.SUPPRESS,
            help="override IB_API_MODE",
        )


def build_parser() -> argparse.ArgumentParser:
    formatter = _Formatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Feed PostgreSQL with an Interactive Brokers portfolio's net Greeks. "
        "Without a command, runs the service (like `run`).",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    from ibkr_bridge.core._version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _config_options(parser, mode=True, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=EXIT_CODES_HELP,
            formatter_class=formatter,
        )

    run = command(
        "run",
        "run the service (the default)",
        "Run the bridge until SIGINT or SIGTERM: configuration from .env and the "
        "environment; the tables are created if absent.",
    )
    _config_options(run, mode=True)
    run.set_defaults(func=cmd_run)

    check = command(
        "check",
        "check configuration, database, gateway and buffer",
        "Validate the configuration, reach the database (and check the tables' shape), "
        "reach the gateway without taking a client id (SOCKET: version handshake only; "
        "PORTAL: GET /iserver/auth/status) and inspect the buffer. Changes nothing.",
    )
    _config_options(check, mode=True)
    check.add_argument("--json", action="store_true", help="print a JSON object, not a table")
    check.set_defaults(func=cmd_check)

    schema = command(
        "schema",
        "show (or --apply) what the bridge's tables need",
        "Print what the configured database needs for portfolio_greeks, underlying_greeks "
        "and api_logs: tables to create and additive upgrades (missing columns, bridge_key "
        "backfilled, its unique index). With --apply, run them in one transaction, keeping "
        "every row. A change only a human should make (a wrong column type, a NOT NULL) "
        "is printed with its ALTER and makes --apply refuse, exit code 3. --ddl prints the "
        "tables' DDL without connecting.",
    )
    _config_options(schema, mode=False)
    what = schema.add_mutually_exclusive_group()
    what.add_argument("--apply", action="store_true", help="create and upgrade the tables now")
    what.add_argument("--ddl", action="store_true", help="print the DDL only, connect nowhere")
    schema.set_defaults(func=cmd_schema)

    buffer = command(
        "buffer",
        "inspect or drain the crash-safe buffer",
        "The JSONL buffer (BRIDGE_BUFFER_PATH) holds rows while the database is unreachable.",
    )
    buffer_sub = buffer.add_subparsers(dest="buffer_command", metavar="ACTION", required=True)
    status = buffer_sub.add_parser(
        "status",
        help="pending records, oldest/newest, size, quarantined and rejected lines",
        description="Show what the buffer holds, read-only (works while a bridge runs).",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    _config_options(status, mode=False)
    status.add_argument("--json", action="store_true", help="print a JSON object")
    status.set_defaults(func=cmd_buffer_status)
    drain = buffer_sub.add_parser(
        "drain",
        help="write the pending records into the database now",
        description="Drain the buffer into the database now (a progress bar on a terminal, "
        "one line per batch otherwise). Refuses, with exit code 4, while a running bridge "
        "holds the buffer: that bridge drains it itself.",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    _config_options(drain, mode=False)
    drain.set_defaults(func=cmd_buffer_drain)
    replay = buffer_sub.add_parser(
        "replay-rejected",
        help="send the records PostgreSQL refused (dry run unless --apply)",
        description="Send the records kept in <buffer>.rejected again, once the cause is "
        "fixed. Without --apply: say what would be sent (by kind and by the reason it was "
        "rejected) and send nothing. With --apply: validate each record as a live row, "
        "write it idempotently (a record already in the database is skipped) and rewrite "
        "the file with only what still fails. Safe next to a running bridge and safe to run "
        "twice. Exit code 1 when anything stays in the file.",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    _config_options(replay, mode=False)
    replay.add_argument("--apply", action="store_true", help="send them now")
    replay.add_argument("--json", action="store_true", help="print a JSON object")
    replay.set_defaults(func=cmd_buffer_replay_rejected)

    sim = command(
        "sim",
        "run an IBKR simulator (socket or portal)",
        "Run a simulator in the foreground until Ctrl-C or SIGTERM. The arguments after "
        "the simulator's name are its own options, e.g.\n"
        "  ibkr-bridge sim socket --port 4001 --portfolio examples/portfolio.json "
        "--faults faults.json\n"
        "Once it accepts connections it prints one `listening ...` line on stdout (for "
        "portal: the URL and the certificate to trust with IBKR_GATEWAY_CA). See "
        "`ibkr-bridge sim socket --help` and `ibkr-bridge sim portal --help`.",
    )
    sim.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (INFO)")
    sim.add_argument("simulator", choices=["socket", "portal"], help="which API to simulate")
    sim.add_argument(
        "sim_args", nargs=argparse.REMAINDER, metavar="...", help="the simulator's options"
    )
    sim.set_defaults(func=cmd_sim)

    parser.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
