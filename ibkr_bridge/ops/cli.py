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

Exit codes (:mod:`ibkr_bridge.ops.exitcodes`): 0 ok; 1 a check failed or a runtime failure; 2 bad
configuration or usage (argparse's own 2), including a buffer path that cannot be used as
given (a symlink, a directory, not permitted, a file of an unknown version); 3 the bridge's
tables exist in a shape it cannot write to; 4 the buffer is locked by another running bridge
(for ``replay-rejected``: another replay is running). ``replay-rejected`` exits 1 when anything
stays in ``.rejected``.

One module per command (``_run_cmd``, ``_check_cmd``, ``_schema_cmd``, ``_buffer_cmds``,
``_sim_cmd``); heavy modules are imported by the command that needs them, so ``--help`` stays
quick.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Sequence

from ibkr_bridge.ops._buffer_cmds import (
    cmd_buffer_drain,
    cmd_buffer_replay_rejected,
    cmd_buffer_status,
)
from ibkr_bridge.ops._check_cmd import cmd_check
from ibkr_bridge.ops._common import PROG
from ibkr_bridge.ops._run_cmd import cmd_run, serve
from ibkr_bridge.ops._schema_cmd import cmd_schema
from ibkr_bridge.ops._sim_cmd import cmd_sim
from ibkr_bridge.ops.exitcodes import EXIT_CODES_HELP

__all__ = ["build_parser", "cmd_run", "main", "serve"]


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


class _Subcommands:
    """Adds subcommands that all show the exit codes and keep their line breaks."""

    def __init__(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self.sub = sub

    def __call__(
        self,
        name: str,
        help_text: str,
        description: str,
        func: Callable[[argparse.Namespace], int] | None = None,
        *,
        mode: bool | None = None,
        json_help: str | None = None,
    ) -> argparse.ArgumentParser:
        """``mode``: None reads no settings, else whether ``--mode`` is offered too."""
        parser = self.sub.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=EXIT_CODES_HELP,
            formatter_class=_Formatter,
        )
        if mode is not None:
            _config_options(parser, mode=mode)
        if json_help is not None:
            parser.add_argument("--json", action="store_true", help=json_help)
        if func is not None:
            parser.set_defaults(func=func)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Feed PostgreSQL with an Interactive Brokers portfolio's net Greeks. "
        "Without a command, runs the service (like `run`).",
        epilog=EXIT_CODES_HELP,
        formatter_class=_Formatter,
    )
    from ibkr_bridge.core._version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _config_options(parser, mode=True, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    command = _Subcommands(sub)

    command(
        "run",
        "run the service (the default)",
        "Run the bridge until SIGINT or SIGTERM: configuration from .env and the "
        "environment; the tables are created if absent.",
        cmd_run,
        mode=True,
    )

    command(
        "check",
        "check configuration, database, gateway and buffer",
        "Validate the configuration, reach the database (and check the tables' shape), "
        "reach the gateway without taking a client id (SOCKET: version handshake only; "
        "PORTAL: GET /iserver/auth/status) and inspect the buffer. Changes nothing.",
        cmd_check,
        mode=True,
        json_help="print a JSON object, not a table",
    )

    schema = command(
        "schema",
        "show (or --apply) what the bridge's tables need",
        "Print what the configured database needs for portfolio_greeks, underlying_greeks "
        "and api_logs: tables to create and additive upgrades (missing columns, bridge_key "
        "backfilled, its unique index). With --apply, run them in one transaction, keeping "
        "every row. A change only a human should make (a wrong column type, a NOT NULL) "
        "is printed with its ALTER and makes --apply refuse, exit code 3. --ddl prints the "
        "tables' DDL without connecting.",
        cmd_schema,
        mode=False,
    )
    what = schema.add_mutually_exclusive_group()
    what.add_argument("--apply", action="store_true", help="create and upgrade the tables now")
    what.add_argument("--ddl", action="store_true", help="print the DDL only, connect nowhere")

    buffer = command(
        "buffer",
        "inspect or drain the crash-safe buffer",
        "The JSONL buffer (BRIDGE_BUFFER_PATH) holds rows while the database is unreachable.",
    )
    action = _Subcommands(
        buffer.add_subparsers(dest="buffer_command", metavar="ACTION", required=True)
    )
    action(
        "status",
        "pending records, oldest/newest, size, quarantined and rejected lines",
        "Show what the buffer holds, read-only (works while a bridge runs).",
        cmd_buffer_status,
        mode=False,
        json_help="print a JSON object",
    )
    action(
        "drain",
        "write the pending records into the database now",
        "Drain the buffer into the database now (a progress bar on a terminal, "
        "one line per batch otherwise). Refuses, with exit code 4, while a running bridge "
        "holds the buffer: that bridge drains it itself.",
        cmd_buffer_drain,
        mode=False,
    )
    replay = action(
        "replay-rejected",
        "send the records PostgreSQL refused (dry run unless --apply)",
        "Send the records kept in <buffer>.rejected again, once the cause is "
        "fixed. Without --apply: say what would be sent (by kind and by the reason it was "
        "rejected) and send nothing. With --apply: validate each record as a live row, "
        "write it idempotently (a record already in the database is skipped) and rewrite "
        "the file with only what still fails. Safe next to a running bridge and safe to run "
        "twice. Exit code 1 when anything stays in the file.",
        cmd_buffer_replay_rejected,
        mode=False,
        json_help="print a JSON object",
    )
    replay.add_argument("--apply", action="store_true", help="send them now")

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
        cmd_sim,
    )
    sim.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (INFO)")
    sim.add_argument("simulator", choices=["socket", "portal"], help="which API to simulate")
    sim.add_argument(
        "sim_args", nargs=argparse.REMAINDER, metavar="...", help="the simulator's options"
    )

    parser.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
