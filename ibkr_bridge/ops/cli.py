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
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, TextIO

from ibkr_bridge.config import ConfigError, LogFormat, Settings, load_settings
from ibkr_bridge.core.errors import SchemaError, StoreError
from ibkr_bridge.core.redaction import redact_secrets
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
    JsonlBuffer,
    JsonlBufferError,
)

if TYPE_CHECKING:
    from ibkr_bridge.storage.drain import DrainProgress
    from ibkr_bridge.storage.replay import ReplayReport
    from ibkr_bridge.storage.store import Store

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

PROG: Final = "ibkr-bridge"


# --- shared helpers --------------------------------------------------------------------


def _environ(args: argparse.Namespace) -> dict[str, str]:
    environ = dict(os.environ)
    if getattr(args, "mode", None):
        environ["IB_API_MODE"] = args.mode
    return environ


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(_environ(args), dotenv_path=args.env_file)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    # Driver messages can quote a connection string; never let a password through.
    return redact_secrets(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _settings_or_exit(args: argparse.Namespace) -> Settings | int:
    """The settings, or EXIT_CONFIG after printing every problem."""
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Tools report on stdout; the library's warnings (buffer repairs, ...) go to stderr.
    configure_logging(LogFormat.TEXT, "WARNING")
    return settings


async def _open_store(settings: Settings) -> Store:
    from ibkr_bridge.storage.store import Store

    return await Store.open(
        **settings.database.connect_kwargs(),
        connect_timeout=settings.db_connect_timeout,
        command_timeout=settings.db_command_timeout,
    )


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


# --- schema ----------------------------------------------------------------------------


async def _schema(settings: Settings, *, apply: bool) -> int:
    import asyncpg

    from ibkr_bridge.storage.schema import (
        TABLES,
        apply_bridge_schema,
        legacy_underlying_rows,
        plan_bridge_schema,
        table_ddl,
    )

    where = settings.database.redacted()
    try:
        conn = await asyncio.wait_for(
            asyncpg.connect(
                **settings.database.connect_kwargs(),
                timeout=settings.db_connect_timeout,
                command_timeout=settings.db_command_timeout,
            ),
            settings.db_connect_timeout + 1.0,
        )
    except Exception as exc:  # any reason the connection failed is worth showing as is
        print(f"{PROG}: cannot connect to {where}: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        plan = await (apply_bridge_schema(conn) if apply else plan_bridge_schema(conn))
        legacy = 0
        with contextlib.suppress(Exception):  # a note only: never fail what already ran
            legacy = await legacy_underlying_rows(conn)
    except SchemaError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_SCHEMA
    except Exception as exc:  # e.g. no CREATE privilege: the server's words say it best
        print(f"{PROG}: {where}: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=settings.db_command_timeout)
    upgraded = sorted({f.table for f in plan.upgrade})
    kept = sorted(set(TABLES) - set(plan.create) - set(upgraded))
    if apply:
        print(f"{where}: the bridge's tables are in place")
        if plan.create:
            print(f"created: {', '.join(sorted(plan.create))}")
        if upgraded:
            print(f"upgraded, every row kept: {', '.join(upgraded)}")
            for finding in plan.upgrade:
                print("\n".join(f"  {stmt}" for stmt in finding.fix))
        if kept:
            print(f"already present, unchanged: {', '.join(kept)}")
    elif plan.empty:
        print(f"{where}: the bridge's tables are in place; `schema --apply` has nothing to do")
    else:
        print(f"-- {where}: what `ibkr-bridge schema --apply` would do (nothing changed yet)")
        if plan.blocked:
            print("-- first, by hand as the tables' owner (--apply refuses until these are done):")
            for finding in plan.blocked:
                print(f"-- {finding.table}: {finding.problem}")
                print("\n".join(finding.fix))
        for finding in plan.upgrade:
            print(f"-- {finding.table}: {finding.problem}")
            print("\n".join(finding.fix))
        for table in plan.create:
            print(f"-- create {table}")
            print(table_ddl(table))
    if legacy:
        print(
            f"note: {legacy} per-underlying rows are in portfolio_greeks (written by an earlier "
            "version); new ones go to underlying_greeks. docs/operations.md shows how to move "
            "them (the bridge does not)."
        )
    return EXIT_SCHEMA if plan.blocked else EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from ibkr_bridge.storage.schema import DDL

    if args.ddl:
        print(DDL)
        return EXIT_OK
    settings = _settings_or_exit(args)
    if isinstance(settings, int):
        return settings
    return asyncio.run(_schema(settings, apply=args.apply))


# --- buffer ----------------------------------------------------------------------------


def cmd_buffer_status(args: argparse.Namespace) -> int:
    from ibkr_bridge.ops.doctor import render_buffer_status
    from ibkr_bridge.storage.buffer import inspect_buffer
    from ibkr_bridge.storage.drain import RejectedFile

    settings = _settings_or_exit(args)
    if isinstance(settings, int):
        return settings
    found = inspect_buffer(settings.buffer_path)
    rejected = RejectedFile(settings.buffer_path).summary()
    if args.json:
        print(json.dumps({**found.to_json(), "rejected": rejected.to_json()}, indent=2))
    else:
        print(render_buffer_status(found, rejected))
    return EXIT_FAILURE if found.error else EXIT_OK


class _DrainOutput:
    """A progress bar on a terminal, one plain line per batch elsewhere."""

    BAR: Final = 30

    def __init__(self, out: TextIO, total_bytes: int, total_records: int) -> None:
        self.out = out
        self.tty = out.isatty()
        self.total_bytes = max(total_bytes, 1)
        self.total_records = total_records
        self.drained = 0
        self._bar_shown = False

    def __call__(self, progress: DrainProgress, quarantined_in_batch: int) -> None:
        self.drained = progress.drained
        if self.tty:
            done = 1.0 - progress.pending_bytes / self.total_bytes
            filled = round(done * self.BAR)
            self.out.write(
                f"\r[{'#' * filled}{'-' * (self.BAR - filled)}] {done:4.0%}  "
                f"{progress.drained}/{self.total_records} records"
            )
            self._bar_shown = True
        else:
            self.out.write(
                f"batch {progress.batches}: {progress.drained} records drained, "
                f"{progress.rejected} rejected, {progress.quarantined} quarantined, "
                f"{progress.pending_bytes} bytes left\n"
            )
        self.out.flush()

    def finish(self) -> None:
        if self._bar_shown:
            self.out.write("\n")
            self.out.flush()
            self._bar_shown = False


async def _drain(settings: Settings, buffer: JsonlBuffer) -> int:
    from ibkr_bridge.storage.drain import RejectedFile, drain_buffer

    where = settings.database.redacted()
    store = await _open_store(settings)
    try:
        try:
            await store.ensure_schema()
        except SchemaError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_SCHEMA
        except StoreError as exc:
            print(f"{PROG}: {where}: {exc}; nothing drained", file=sys.stderr)
            return EXIT_FAILURE
        pending = buffer.count_pending()
        if not pending:
            print(f"{buffer.path}: nothing to drain")
            return EXIT_OK
        rejects = RejectedFile(buffer.path)
        output = _DrainOutput(sys.stdout, buffer.pending_bytes, pending)
        try:
            result = await drain_buffer(
                buffer,
                store,
                batch_size=settings.batch_size,
                reject=rejects,
                on_batch=output,
            )
        except StoreError as exc:
            output.finish()
            print(
                f"{PROG}: {where}: {exc}; stopped after {output.drained} records, "
                "the rest stays in the buffer",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        output.finish()
    finally:
        await store.close()
    written = result.drained - result.rejected
    print(f"drained {written} records into {where}")
    if result.rejected:
        print(f"{result.rejected} records refused by PostgreSQL, kept in {rejects.path}")
    if result.quarantined:
        print(f"{result.quarantined} unreadable lines moved to {buffer.quarantine_path}")
    return EXIT_OK


def cmd_buffer_drain(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(args)
    if isinstance(settings, int):
        return settings
    buffer = JsonlBuffer(settings.buffer_path, max_bytes=settings.buffer_max_bytes)
    try:
        buffer.open()
    except BufferLockedError as exc:
        print(f"{PROG}: refusing to drain: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (BufferPathError, BufferFormatError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (JsonlBufferError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return asyncio.run(_drain(settings, buffer))
    finally:
        buffer.close()


_LISTED: Final = 20  # lines named one by one in replay-rejected's text output


def _render_replay(report: ReplayReport, where: str) -> str:
    from ibkr_bridge.storage.drain import reason_of

    path = report.path
    if not report.exists:
        return f"{path}: no file: nothing was rejected"
    out = [f"{path}: {report.entries} entries"]
    if report.applied:
        out.append(
            f"sent {report.sent} records to {where} (any already there were skipped, not "
            "written twice)"
        )
    else:
        out.append(
            f"would send {report.sendable} records (dry run: nothing was sent; --apply sends)"
        )
    if report.by_kind:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(report.by_kind.items()))
        out.append(f"  by kind: {kinds}")
        out.append("  by reason they were rejected:")
        out.extend(f"    {n:>6}  {reason}" for reason, n in report.by_reason.most_common())

    def listed(title: str, items: list[tuple[int, str]]) -> None:
        if not items:
            return
        out.append(f"{title}: {len(items)}")
        out.extend(f"  line {n}: {redact_secrets(reason_of(text))}" for n, text in items[:_LISTED])
        if len(items) > _LISTED:
            out.append(f"  ... and {len(items) - _LISTED} more")

    stay = "kept in the file" if report.applied else "would stay in the file"
    listed(f"cannot be sent as they are, {stay}", report.unusable)
    listed("refused again by PostgreSQL, kept with the new reason", report.refused)
    if report.stopped is not None:
        why = redact_secrets(reason_of(report.stopped))
        out.append(
            f"stopped: {why}; {report.not_attempted} records not sent, kept in the file: "
            "run again when the database answers"
        )
    if report.applied:
        left = report.kept + report.appended_meanwhile
        out.append(
            f"{path}: {left} entries left"
            + (
                f" ({report.appended_meanwhile} added meanwhile)"
                if report.appended_meanwhile
                else ""
            )
            if left
            else f"{path}: removed, nothing left to replay"
        )
    return "\n".join(out)


async def _replay(settings: Settings, apply: bool) -> ReplayReport | int:
    from ibkr_bridge.storage.drain import RejectedFile, RejectedFileChangedError
    from ibkr_bridge.storage.replay import replay_rejected

    rejects = RejectedFile(settings.buffer_path)
    where = settings.database.redacted()
    if not apply:
        return await replay_rejected(rejects, None)
    if not rejects.path.exists():
        return await replay_rejected(rejects, None)  # the same "no file" answer, no database
    store = await _open_store(settings)
    try:
        try:
            await store.ensure_schema()
        except SchemaError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_SCHEMA
        except StoreError as exc:
            print(f"{PROG}: {where}: {exc}; nothing sent", file=sys.stderr)
            return EXIT_FAILURE
        try:
            return await replay_rejected(rejects, store, batch_size=settings.batch_size)
        except BlockingIOError:
            print(
                f"{PROG}: another replay-rejected is running on {rejects.path}",
                file=sys.stderr,
            )
            return EXIT_LOCKED
        except RejectedFileChangedError as exc:
            print(
                f"{PROG}: {exc}; it was left as it is. What was sent is in the database; "
                "run again to finish (nothing is written twice)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
    finally:
        await store.close()


def cmd_buffer_replay_rejected(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(args)
    if isinstance(settings, int):
        return settings
    try:
        report = asyncio.run(_replay(settings, args.apply))
    except OSError as exc:  # e.g. the file or its directory cannot be read or written
        print(f"{PROG}: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(report, int):
        return report
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(_render_replay(report, settings.database.redacted()))
    return EXIT_FAILURE if report.kept or report.stopped else EXIT_OK


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
