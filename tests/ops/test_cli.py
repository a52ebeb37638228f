"""The ``ibkr-bridge`` command line, each command run as a real subprocess.

Every run gets an explicit environment (no stray DATABASE_URL, PG* or IB_* from the shell),
``--env-file`` naming a file that does not exist and a temporary working directory, so no
``.env`` is read by accident. The gateway is a TwsSimulator (or PortalSimulator) in this
process, the database the test's private schema on a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from ibkr_bridge.core.records import ApiEvent, GreeksRow, Record
from ibkr_bridge.sim import TwsSimulator, single_underlying_portfolio
from ibkr_bridge.storage.buffer import JsonlBuffer
from ibkr_bridge.storage.schema import ensure_bridge_schema
from ibkr_bridge.testing import TcpProxy, TestDatabase

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-Pw"  # must never appear in any output
START_API = 71  # the TWS API message that claims a client id


@attrs.frozen
class Done:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def check(self, name: str) -> dict[str, Any]:
        """One check of a ``check --json`` answer."""
        found: dict[str, Any] = next(c for c in self.json()["checks"] if c["name"] == name)
        return found


@attrs.define
class World:
    tmp: Path
    db: TestDatabase
    sim: TwsSimulator
    env: dict[str, str]

    @property
    def buffer_path(self) -> Path:
        return self.tmp / "state" / "buffer.jsonl"

    def command(self, *args: str) -> list[str]:
        # --env-file before the command: it must survive into every subcommand.
        return [
            sys.executable,
            "-m",
            "ibkr_bridge",
            "--env-file",
            str(self.tmp / "none.env"),
            *args,
        ]

    async def spawn(
        self, *args: str, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.command(*args),
            env={**self.env, **(env or {})},
            cwd=self.tmp,
            stdout=kwargs.pop("stdout", asyncio.subprocess.PIPE),
            stderr=kwargs.pop("stderr", asyncio.subprocess.PIPE),
            **kwargs,
        )

    async def run(self, *args: str, env: Mapping[str, str] | None = None) -> Done:
        proc = await self.spawn(*args, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        done = Done(proc.returncode, out.decode(), err.decode())
        assert PASSWORD not in done.out + done.err
        return done

    async def count(self, table: str) -> int:
        rows = await self.db.fetch(f"SELECT count(*) AS n FROM {table}")
        return int(rows[0]["n"])

    async def count_tables(self) -> set[str]:
        rows = await self.db.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            self.db.schema,
        )
        return {r["table_name"] for r in rows}

    async def create_tables(self) -> None:
        conn = await self.db.connect()
        try:
            await ensure_bridge_schema(conn)
        finally:
            await conn.close()


def clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
async def world(db: TestDatabase, tmp_path: Path) -> AsyncIterator[World]:
    async with TwsSimulator(single_underlying_portfolio(), tick_interval=0.5) as sim:
        env = clean_env(tmp_path)
        env.update(
            DATABASE_URL=db.dsn,
            BRIDGE_BUFFER_PATH=str(tmp_path / "state" / "buffer.jsonl"),
            IB_SOCKET_PORT=str(sim.port),
            IB_CONNECT_TIMEOUT="5",
            BRIDGE_DB_CONNECT_TIMEOUT="3",
            BRIDGE_DB_COMMAND_TIMEOUT="5",
        )
        yield World(tmp_path, db, sim, env)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def records(n_rows: int, n_events: int = 0) -> list[Record]:
    base = datetime(2025, 3, 3, 15, 0, tzinfo=UTC)
    out: list[Record] = [
        GreeksRow(
            timestamp=base + timedelta(seconds=5 * i),
            account="DU1234567",
            api_mode="SOCKET",
            delta=float(i),
            gamma=0.5,
            legs=3,
        )
        for i in range(n_rows)
    ]
    out += [
        ApiEvent(
            timestamp=base + timedelta(seconds=5 * (n_rows + i)),
            api_mode="SOCKET",
            event="test",
            message=f"event {i}",
        )
        for i in range(n_events)
    ]
    return out


# --- help and schema ---------------------------------------------------------------------


async def test_help_names_every_command_and_exit_code(world: World) -> None:
    top = await world.run("--help")
    assert top.code == 0
    for command in ("run", "check", "schema", "buffer", "sim"):
        assert f"    {command} " in top.out
    for line in (
        "0  ok",
        "1  a check failed",
        "2  bad configuration",
        "3  the bridge's tables",
        "4  the buffer is locked",
    ):
        assert line in top.out
    for sub in (("check",), ("buffer", "drain"), ("buffer", "status"), ("schema",), ("run",)):
        page = await world.run(*sub, "--help")
        assert page.code == 0, sub
        assert "exit codes:" in page.out, sub
    usage = await world.run("bogus")
    assert usage.code == 2
    assert "invalid choice" in usage.err


async def test_schema_prints_the_plan_and_apply_creates_the_tables(world: World) -> None:
    ddl = await world.run("schema", "--ddl", env={"DATABASE_URL": "not a url"})
    assert ddl.code == 0  # --ddl reads no configuration and connects nowhere
    for table in ("portfolio_greeks", "underlying_greeks", "api_logs"):
        assert f"CREATE TABLE IF NOT EXISTS {table}" in ddl.out

    plan = await world.run("schema")
    assert plan.code == 0, plan.err
    assert "what `ibkr-bridge schema --apply` would do (nothing changed yet)" in plan.out
    for table in ("portfolio_greeks", "underlying_greeks", "api_logs"):
        assert f"CREATE TABLE IF NOT EXISTS {table}" in plan.out
    assert await world.count_tables() == set()

    applied = await world.run("schema", "--apply")
    assert applied.code == 0, applied.err
    assert "created: api_logs, portfolio_greeks, underlying_greeks" in applied.out
    assert await world.count_tables() == {"portfolio_greeks", "underlying_greeks", "api_logs"}

    again = await world.run("schema", "--apply")
    assert again.code == 0
    assert "already present, unchanged: api_logs, portfolio_greeks, underlying_greeks" in (
        again.out
    )
    nothing = await world.run("schema")
    assert nothing.code == 0
    assert "`schema --apply` has nothing to do" in nothing.out
    assert "note:" not in nothing.out

    # A per-underlying row an earlier version wrote to portfolio_greeks is pointed out.
    await world.db.fetch(
        "INSERT INTO portfolio_greeks (timestamp, contract, bridge_key) VALUES (now(), 'SPY', 'k')"
    )
    noted = await world.run("schema")
    assert noted.code == 0
    assert "note: 1 per-underlying rows are in portfolio_greeks" in noted.out


# --- check ---------------------------------------------------------------------------------


async def test_check_passes_with_a_bare_handshake_and_takes_no_client_id(world: World) -> None:
    await world.create_tables()
    done = await world.run("check")
    assert done.code == 0, done.out + done.err
    lines = {line.split()[0]: line for line in done.out.splitlines()[1:6]}
    assert set(lines) == {"configuration", "database", "schema", "gateway", "buffer"}
    assert all(line.split()[1] == "OK" for line in lines.values()), done.out
    assert f"127.0.0.1:{world.sim.port}" in lines["gateway"]
    assert "exit code 0" in done.out

    # The Gateway saw connections that never went past the version handshake.
    assert world.sim.connections_accepted == 1
    assert world.sim.count_requests(START_API) == 0
    assert world.sim.requests == ()
    assert world.sim.client_ids == frozenset()

    as_json = await world.run("check", "--json")
    assert as_json.code == 0
    assert as_json.json()["ok"] is True
    gateway = as_json.check("gateway")
    assert gateway["status"] == "OK"
    assert gateway["data"]["server_version"] == world.sim.max_version
    assert world.sim.connections_accepted == 2
    assert world.sim.count_requests(START_API) == 0


async def test_check_fails_on_a_wrong_gateway_port(world: World) -> None:
    port = unused_port()
    done = await world.run("check", "--json", env={"IB_SOCKET_PORT": str(port)})
    assert done.code == 1
    gateway = done.check("gateway")
    assert gateway["status"] == "FAIL"
    assert f"127.0.0.1:{port}: connection refused" in gateway["detail"]
    assert done.check("database")["status"] == "OK"

    table = await world.run("check", env={"IB_SOCKET_PORT": str(port)})
    assert table.code == 1
    assert any(line.startswith("gateway") and " FAIL " in line for line in table.out.splitlines())


async def test_check_fails_naming_the_database_when_it_is_down(world: World) -> None:
    async with TcpProxy(*world.db.server_address()) as proxy:
        proxy.down()
        dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{proxy.port}/test"
        done = await world.run("check", "--json", env={"DATABASE_URL": dsn})
        assert proxy.connections_accepted >= 1  # it really tried, through the proxy
    assert done.code == 1
    database = done.check("database")
    assert database["status"] == "FAIL"
    assert (
        f"postgresql://postgres:***@127.0.0.1:{proxy.port}/test: cannot connect"
        in (database["detail"])
    )
    assert done.check("schema")["status"] == "SKIP"
    assert done.check("gateway")["status"] == "OK"  # the other checks still ran


async def test_bad_configuration_lists_every_problem_with_exit_2(world: World) -> None:
    bad = {"IB_SOCKET_PORT": "99999", "IB_CLIENT_ID": "0", "BRIDGE_POLL_INTERVAL": "-1"}
    done = await world.run("check", env=bad)
    assert done.code == 2
    config = next(line for line in done.out.splitlines() if line.startswith("configuration"))
    assert " FAIL " in config
    assert "3 problems" in config
    for name in bad:
        assert f"{name}:" in done.out
    assert "SKIP" in done.out
    assert world.sim.connections_accepted == 0

    commands = [(), ("run",), ("buffer", "status"), ("buffer", "drain"), ("schema", "--apply")]
    for command in commands:  # () is the bare `python -m ibkr_bridge`: the service
        refused = await world.run(*command, env=bad)
        assert refused.code == 2, command
        assert all(f"{name}:" in refused.err for name in bad), command

    # A dotenv file given on the subcommand is read (and the environment wins over it).
    dotenv = world.tmp / "bad.env"
    dotenv.write_text("IB_MARKET_DATA_TYPE=7\nIB_SOCKET_PORT=1\n")
    from_file = await world.run("check", "--env-file", str(dotenv), "--json")
    assert from_file.code == 2
    assert from_file.check("configuration")["data"]["problems"] == [
        "IB_MARKET_DATA_TYPE: 7 is out of range (1..4)"
    ]


async def test_a_table_with_a_wrong_type_is_exit_3_with_its_alter(world: World) -> None:
    conn = await world.db.connect()
    try:
        await conn.execute("CREATE TABLE portfolio_greeks (timestamp timestamptz, delta real)")
    finally:
        await conn.close()
    alter = "ALTER TABLE portfolio_greeks ALTER COLUMN delta TYPE double precision USING"
    done = await world.run("check")
    assert done.code == 3
    schema = [line for line in done.out.splitlines() if "portfolio_greeks: " in line]
    assert "portfolio_greeks: column delta is real, needs double precision" in "\n".join(schema)

    plan = await world.run("schema")
    assert plan.code == 3
    assert alter in plan.out
    assert "ALTER TABLE portfolio_greeks ADD COLUMN gamma double precision;" in plan.out

    applied = await world.run("schema", "--apply")
    assert applied.code == 3
    assert alter in applied.err
    columns = await world.db.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1",
        world.db.schema,
    )
    assert {r["column_name"] for r in columns} == {"timestamp", "delta"}  # nothing changed
    assert await world.count_tables() == {"portfolio_greeks"}

    with JsonlBuffer(world.buffer_path) as buf:
        buf.append(records(1))
    drain = await world.run("buffer", "drain")
    assert drain.code == 3
    assert "column delta is real" in drain.err


async def test_schema_apply_upgrades_a_table_missing_columns(world: World) -> None:
    conn = await world.db.connect()
    try:
        await conn.execute("CREATE TABLE portfolio_greeks (timestamp timestamptz, delta float8)")
        await conn.execute("INSERT INTO portfolio_greeks VALUES ('2026-01-02T03:04:05Z', 1.25)")
    finally:
        await conn.close()
    assert (await world.run("check")).code == 3
    with JsonlBuffer(world.buffer_path) as buf:
        buf.append(records(3))
    assert (await world.run("buffer", "drain")).code == 3  # the service never alters a table

    plan = await world.run("schema")
    assert plan.code == 0, plan.err
    assert "ALTER TABLE portfolio_greeks ADD COLUMN bridge_key text;" in plan.out
    applied = await world.run("schema", "--apply")
    assert applied.code == 0, applied.err
    assert "upgraded, every row kept: portfolio_greeks" in applied.out
    assert "created: api_logs, underlying_greeks" in applied.out

    drain = await world.run("buffer", "drain")
    assert drain.code == 0, drain.err
    rows = await world.db.fetch("SELECT delta, bridge_key FROM portfolio_greeks ORDER BY timestamp")
    assert [r["delta"] for r in rows] == [0.0, 1.0, 2.0, 1.25]  # the old row is the newest
    assert rows[-1]["bridge_key"].startswith("legacy:")
    assert (await world.run("check")).code == 0


async def test_tables_from_before_legs_model_are_upgraded_as_documented(world: World) -> None:
    await world.create_tables()
    conn = await world.db.connect()
    try:  # the previous release's tables: without legs_model
        for table in ("portfolio_greeks", "underlying_greeks"):
            await conn.execute(f"ALTER TABLE {table} DROP COLUMN legs_model")
    finally:
        await conn.close()
    checked = await world.run("check")
    assert checked.code == 3
    assert "portfolio_greeks: missing column legs_model" in checked.out + checked.err

    plan = await world.run("schema")
    assert plan.code == 0, plan.err
    # What docs/operations.md shows, after its first line (which names the database).
    doc = (ROOT / "docs" / "operations.md").read_text()
    section = doc.split("### Upgrading from an earlier release", 1)[1]
    shown = section.split("```console\n", 1)[1].split("```", 1)[0].splitlines()
    assert shown[0] == "$ ibkr-bridge schema"
    assert plan.out.splitlines()[1:] == shown[2:]
    applied = await world.run("schema", "--apply")
    assert applied.code == 0, applied.err
    assert "upgraded, every row kept: portfolio_greeks, underlying_greeks" in applied.out
    assert (await world.run("check")).code == 0


async def test_check_fails_when_underlying_greeks_may_not_be_written(world: World) -> None:
    await world.create_tables()
    role = f"bridge_cli_{uuid.uuid4().hex[:12]}"
    conn = await world.db.connect()
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f'GRANT USAGE ON SCHEMA "{world.db.schema}" TO {role}')
        await conn.execute(f"GRANT INSERT, SELECT ON portfolio_greeks, api_logs TO {role}")
        dsn = world.db.dsn.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
        assert role in dsn
        done = await world.run("check", "--json", env={"DATABASE_URL": dsn})
    finally:
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
        await conn.close()
    assert done.code == 1
    schema = done.check("schema")
    assert schema["status"] == "FAIL"
    assert f"user {role} may not INSERT into underlying_greeks" in schema["detail"]


async def test_run_exits_3_on_a_table_in_the_wrong_shape(world: World) -> None:
    conn = await world.db.connect()
    try:
        await conn.execute("CREATE TABLE portfolio_greeks (timestamp timestamptz, bridge_key text)")
    finally:
        await conn.close()
    proc = await world.spawn("run")
    assert proc.stderr is not None
    carried_on = False
    try:
        # Either it exits (the documented behaviour) or it says it carries on regardless.
        while line := await asyncio.wait_for(proc.stderr.readline(), 30):
            if b"buffering until it is" in line:
                carried_on = True
                break
        if not carried_on:
            await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not carried_on, "the bridge went on running with a table it cannot write to"
    assert proc.returncode == 3


# --- buffer --------------------------------------------------------------------------------


def fill_buffer(path: Path) -> list[Record]:
    """Five records and one garbage line: the first two and the garbage are committed."""
    items = records(5)
    with JsonlBuffer(path) as buf:
        buf.append(items[:2])
    with path.open("ab") as f:
        f.write(b"this is not a record\n")
    with JsonlBuffer(path) as buf:
        buf.append(items[2:])
        batch = buf.read_batch(3)
        assert len(batch.records) == 2
        assert batch.quarantined == 1
        buf.commit(batch)
    return items


async def test_buffer_status_reports_what_the_buffer_holds(world: World) -> None:
    empty = await world.run("buffer", "status", "--json")
    assert empty.code == 0
    assert empty.json()["exists"] is False
    assert empty.json()["records_pending"] == 0
    assert not world.buffer_path.parent.exists()  # looking created nothing

    items = fill_buffer(world.buffer_path)
    done = await world.run("buffer", "status", "--json")
    assert done.code == 0, done.err
    got = done.json()
    assert got["records_pending"] == 3
    assert got["quarantined_lines"] == 1
    assert got["locked"] is False
    assert datetime.fromisoformat(got["oldest"]) == items[2].timestamp
    assert datetime.fromisoformat(got["newest"]) == items[4].timestamp

    # While a bridge (here: this process) holds the buffer, the figures are the same.
    with JsonlBuffer(world.buffer_path) as held:
        stats = held.stats()
        locked = await world.run("buffer", "status", "--json")
        text = await world.run("buffer", "status")
    assert locked.json()["locked"] is True
    assert locked.json()["locked_by_pid"] == str(os.getpid())
    assert f"in use by a running bridge (pid {os.getpid()})" in text.out
    for view in (got, locked.json()):
        assert view["records_pending"] == stats.records_pending
        assert view["pending_bytes"] == stats.pending_bytes
        assert view["file_bytes"] == stats.file_bytes
        assert view["file_id"] == stats.file_id
        assert view["quarantined_lines"] == stats.quarantined_lines
        assert datetime.fromisoformat(view["oldest"]) == stats.oldest
        assert datetime.fromisoformat(view["newest"]) == stats.newest


async def test_buffer_drain_moves_the_rows_into_the_database(world: World) -> None:
    items = records(12, n_events=2)
    with JsonlBuffer(world.buffer_path) as buf:
        buf.append(items)
    done = await world.run("buffer", "drain", env={"BRIDGE_BATCH_SIZE": "5"})
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("batch")] == [
        "batch 1",
        "batch 2",
        "batch 3",
        "batch 4",  # the empty read that finds the end
    ]
    assert "drained 14 records" in done.out
    assert await world.count("portfolio_greeks") == 12
    assert await world.count("api_logs") == 2
    deltas = await world.db.fetch("SELECT delta FROM portfolio_greeks ORDER BY timestamp")
    assert [r["delta"] for r in deltas] == [float(i) for i in range(12)]
    assert not world.buffer_path.exists()  # fully drained, so deleted

    again = await world.run("buffer", "drain")
    assert again.code == 0
    assert "nothing to drain" in again.out


async def test_buffer_drain_draws_a_progress_bar_on_a_terminal(world: World) -> None:
    with JsonlBuffer(world.buffer_path) as buf:
        buf.append(records(6))
    leader, follower = pty.openpty()
    try:
        proc = await world.spawn("buffer", "drain", env={"BRIDGE_BATCH_SIZE": "2"}, stdout=follower)
        os.close(follower)
        follower = -1
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is gone
            while chunk := os.read(leader, 65536):
                shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0, err
    assert b"\r[##########----------" in shown  # a third done after the first batch
    assert b"\r[" + b"#" * 30 + b"] 100%  6/6 records" in shown
    assert b"batch 1:" not in shown
    assert await world.count("portfolio_greeks") == 6


async def test_buffer_drain_refuses_while_a_bridge_holds_the_buffer(world: World) -> None:
    await world.create_tables()
    with JsonlBuffer(world.buffer_path) as held:
        held.append(records(4))
        refused = await world.run("buffer", "drain")
        check = await world.run("check", "--json")
    assert refused.code == 4
    assert "refusing to drain" in refused.err
    assert f"pid {os.getpid()}" in refused.err
    assert await world.count("portfolio_greeks") == 0

    # For check a held buffer is information, not a failure.
    assert check.code == 0, check.out
    buffer = check.check("buffer")
    assert buffer["status"] == "WARN"  # records are pending
    assert f"in use by a running bridge (pid {os.getpid()})" in buffer["detail"]
    assert buffer["data"]["records_pending"] == 4


# --- run -----------------------------------------------------------------------------------


async def test_run_writes_rows_and_stops_cleanly_on_sigterm(world: World) -> None:
    proc = await world.spawn("run", env={"BRIDGE_POLL_INTERVAL": "0.5"})
    try:
        for _ in range(400):  # polled, not timed: at most ~20 s of 50 ms waits
            with contextlib.suppress(Exception):  # the tables appear once the bridge made them
                if await world.count("portfolio_greeks") >= 1:
                    break
            assert proc.returncode is None, "the bridge exited early"
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no row written")
        assert world.sim.client_ids == frozenset({10})  # IB_CLIENT_ID's default
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    events = [r["event"] for r in await world.db.fetch("SELECT event FROM api_logs ORDER BY id")]
    assert events[0] == "startup"
    assert events[-1] == "shutdown"


# --- sim -----------------------------------------------------------------------------------


async def _listening(proc: asyncio.subprocess.Process) -> list[str]:
    """The words after ``listening`` in the simulator's announcement on stdout."""
    assert proc.stdout is not None
    while line := await asyncio.wait_for(proc.stdout.readline(), 30):
        if line.startswith(b"listening "):
            return line.decode().split()[1:]
    raise AssertionError("the simulator ended before saying where it listens")


async def _sim_port(proc: asyncio.subprocess.Process) -> int:
    return int((await _listening(proc))[0].rsplit(":", 1)[1])


async def test_sim_socket_serves_a_portfolio_and_runs_a_fault_script(world: World) -> None:
    portfolio = str(ROOT / "examples" / "portfolio.json")
    faults = world.tmp / "faults.json"
    faults.write_text(json.dumps([{"at": 0, "fault": "refuse", "seconds": 3600}]))
    for script, expected in (((), "OK"), (("--faults", str(faults)), "FAIL")):
        proc = await world.spawn(
            "sim",
            "socket",
            "--port",
            "0",
            "--portfolio",
            portfolio,
            *script,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            port = await _sim_port(proc)
            done = await world.run("check", "--json", env={"IB_SOCKET_PORT": str(port)})
            assert done.check("gateway")["status"] == expected, done.out
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0


async def _portal_url(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    """(IBKR_GATEWAY_URL, IBKR_GATEWAY_CA) from ``listening <url> ca <pem>``."""
    url, ca_word, ca = await _listening(proc)
    assert ca_word == "ca"
    return url, ca


async def test_sim_portal_and_check_in_portal_mode(world: World) -> None:
    await world.create_tables()
    faults = world.tmp / "portal-faults.json"
    faults.write_text(json.dumps([{"at": 0, "fault": "competing", "seconds": 3600}]))
    portfolio = str(ROOT / "examples" / "portfolio.json")
    quiet = asyncio.subprocess.DEVNULL
    proc = await world.spawn("sim", "portal", "--port", "0", "--portfolio", portfolio, stderr=quiet)
    competing = await world.spawn(
        "sim",
        "--log-level",
        "WARNING",
        "portal",
        "--port",
        "0",
        "--faults",
        str(faults),
        stderr=quiet,
    )
    try:
        url, ca = await _portal_url(proc)
        portal = {"IBKR_GATEWAY_URL": url, "IBKR_GATEWAY_CA": ca}
        ok = await world.run("check", "--mode", "PORTAL", "--json", env=portal)
        assert ok.code == 0, ok.out
        gateway = ok.check("gateway")
        assert gateway["status"] == "OK"
        assert gateway["data"]["authenticated"] is True
        assert gateway["data"]["competing"] is False
        assert "authenticated=True competing=False connected=True" in gateway["detail"]

        # TLS is verified: without the simulator's certificate the gateway is not trusted.
        untrusted = await world.run(
            "check", "--mode", "PORTAL", "--json", env={"IBKR_GATEWAY_URL": url}
        )
        assert untrusted.code == 1
        assert "certificate not trusted" in untrusted.check("gateway")["detail"]

        url, ca = await _portal_url(competing)
        taken = await world.run(
            "check",
            "--mode",
            "PORTAL",
            "--json",
            env={"IBKR_GATEWAY_URL": url, "IBKR_GATEWAY_CA": ca},
        )
        assert taken.code == 1
        assert taken.check("gateway")["data"]["competing"] is True
        assert "another login holds" in taken.check("gateway")["detail"]
        for sim in (proc, competing):
            sim.send_signal(signal.SIGTERM)
            await asyncio.wait_for(sim.wait(), 30)
    finally:
        for sim in (proc, competing):
            if sim.returncode is None:
                sim.kill()
                await sim.wait()
    assert proc.returncode == 0
    assert competing.returncode == 0
