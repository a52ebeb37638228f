"""The fault matrix: one row per fault, each ending with the same invariants.

Every case runs the real Bridge against a gateway simulator (IB Gateway for SOCKET, Client
Portal for PORTAL) and a real PostgreSQL behind a TCP proxy on one fake clock (see
``harness.py``): the
scenario injects its fault and checks that the fault really happened (a matrix row that
never trips anything proves nothing); the harness then recovers and checks nothing was
lost, duplicated or written wrong and every event reached ``api_logs``.

The configuration rows check that a bad value in each setting is refused with a
:class:`ConfigError` naming that setting, and (one combined subprocess) that the service
exits with code 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ibkr_bridge import ConnectionState
from ibkr_bridge.config import ConfigError, load_settings, redact_dsn, setting_keys
from ibkr_bridge.storage.buffer import BufferPathError
from ibkr_bridge.testing import TestDatabase, wait_until

from .harness import (
    Case,
    Outcome,
    World,
    assert_report,
    check_invariants,
    make_world,
    record,
    run_case,
)

ROOT = Path(__file__).resolve().parents[2]

# -- helpers ---------------------------------------------------------------------------------


def breaker_errors(w: World) -> list[str]:
    return [str(e.detail.get("error", "")) for e in w.transitions("breaker")]


def opened(w: World) -> int:
    return sum(1 for e in w.transitions("breaker") if e.dest_state == "OPEN")


async def until_opened(w: World, times: int = 1) -> None:
    await wait_until(lambda: opened(w) >= times, timeout=15)


async def admin(w: World, *statements: str) -> None:
    conn = await asyncpg.connect(w.db.server_dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


# -- database rows ---------------------------------------------------------------------------


async def db_down(w: World) -> None:
    w.pg.down()


async def database_down_at_start(w: World) -> None:
    await w.data_ready()
    await w.ticks(4)
    await until_opened(w)
    tables = await w.db.fetch("SELECT to_regclass('portfolio_greeks') AS t")
    assert tables[0]["t"] is None, "the tables exist although the database was never reached"


async def database_down_mid_run(w: World) -> None:
    await w.data_ready()
    await w.ticks(2)
    w.pg.down()  # refuse new connections and cut the open ones, mid-query if need be
    await w.ticks(6)
    await until_opened(w)
    await w.clock.advance(10.0)  # a probe while still down: it must fail and re-open
    await until_opened(w, 2)


async def database_flapping(w: World) -> None:
    await w.data_ready()
    await w.ticks(1)
    up = True
    for second in range(90):  # 90 s of fake time, the proxy toggled every 3 s
        if second % 3 == 0:
            up = not up
            if up:
                w.pg.up()
            else:
                w.pg.down()
        await w.clock.advance(1.0)
        await asyncio.sleep(0.02)  # real time for the IO the second set off
    assert opened(w) >= 2, f"the breaker opened {opened(w)} time(s) while flapping"
    assert w.reached("breaker", "CLOSED"), "never recovered between flaps"


async def database_slower_than_the_deadline(w: World) -> None:
    await w.data_ready()
    await w.ticks(1)
    w.pg.blackhole()  # the server swallows everything: no error, no answer
    await w.ticks(1)  # this write hangs: spilled to the buffer, then the deadline fails it
    await until_opened(w)
    await w.ticks(2)
    await w.clock.advance(10.0)  # the probe hangs too and gives up at its deadline
    await until_opened(w, 2)
    assert any("deadline" in e for e in breaker_errors(w)), breaker_errors(w)


async def table_dropped(w: World) -> None:
    await w.data_ready()
    await w.ticks(2)
    await w.live_bridge.sink.flush()
    conn = await w.db.connect()
    try:
        async with conn.transaction():
            # Keep the evidence (rows written before the drop) so the invariants can see it.
            await conn.execute("LOCK TABLE portfolio_greeks, api_logs IN ACCESS EXCLUSIVE MODE")
            await conn.execute("CREATE TABLE saved_greeks AS SELECT * FROM portfolio_greeks")
            await conn.execute("CREATE TABLE saved_events AS SELECT * FROM api_logs")
            await conn.execute("DROP TABLE portfolio_greeks, api_logs")
    finally:
        await conn.close()
    w.saved_greeks.append("saved_greeks")
    w.saved_events.append("saved_events")
    await w.ticks(2)
    await until_opened(w)
    assert any("does not exist" in e for e in breaker_errors(w)), breaker_errors(w)


class AuthRole:
    """A login role of our own on the shared server (unique name, dropped afterwards)."""

    def __init__(self) -> None:
        self.name = f"bridge_fault_{uuid.uuid4().hex[:12]}"
        self.password = uuid.uuid4().hex


async def auth_setup(w: World) -> None:
    role = AuthRole()
    w.scratch["role"] = role
    await admin(
        w,
        f"CREATE ROLE {role.name} LOGIN PASSWORD '{role.password}'",
        f'GRANT USAGE, CREATE ON SCHEMA "{w.db.schema}" TO {role.name}',
    )

    async def drop() -> None:
        await admin(
            w,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role.name}'",
            f"DROP OWNED BY {role.name}",
            f"DROP ROLE {role.name}",
        )

    w.cleanups.append(drop)
    parts = urlsplit(w.env["DATABASE_URL"])
    netloc = f"{role.name}:{role.password}@{parts.hostname}:{parts.port}"
    w.env["DATABASE_URL"] = urlunsplit(parts._replace(netloc=netloc))


async def authentication_failing(w: World) -> None:
    role: AuthRole = w.scratch["role"]
    await w.data_ready()
    await w.ticks(2)
    await w.live_bridge.sink.flush()
    await admin(
        w,
        f"ALTER ROLE {role.name} NOLOGIN",
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role.name}'",
    )
    await w.ticks(3)
    await until_opened(w)
    await w.clock.advance(10.0)  # the probe has to log in again: refused (SQLSTATE 28000)
    await until_opened(w, 2)
    assert any("not permitted to log in" in e for e in breaker_errors(w)), breaker_errors(w)
    await admin(w, f"ALTER ROLE {role.name} LOGIN")


async def buffer_full(w: World) -> None:
    await w.data_ready()
    await w.ticks(1)
    w.pg.down()
    await w.ticks(10)
    await wait_until(lambda: len(w.refusals.keys) > 0, timeout=10)
    assert w.live_bridge.status.buffer_pending_bytes > 0, "nothing was kept in the buffer"


async def refusals_reported(w: World) -> None:
    episodes = [e for e in w.events if e.event == "buffer_full"]
    assert episodes, "the refusal episode never reached api_logs"
    assert episodes[-1].detail["refused_total"] == len(w.refusals.keys)


# The unreadable buffer: as root, chmod 000 does not stop us (CAP_DAC_OVERRIDE), so the
# failing start runs with the effective uid of an unprivileged user who owns the files.
NOBODY = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else None


def _directory_for(uid: int) -> Path:
    # pytest's tmp_path is closed to other users: make one they can reach.
    top = Path(tempfile.mkdtemp(prefix="ibkr-bridge-faults-"))
    top.chmod(0o711)
    directory = top / "buffer"
    directory.mkdir(mode=0o700)
    os.chown(directory, uid, -1)
    return directory


async def private_buffer_dir(w: World) -> None:
    w.pg.down()  # the first bridge has to buffer everything
    if NOBODY is None:
        return
    directory = _directory_for(NOBODY)
    w.buffer_path = directory / "buffer.jsonl"
    w.env["BRIDGE_BUFFER_PATH"] = str(w.buffer_path)

    async def remove() -> None:
        shutil.rmtree(directory.parent, ignore_errors=True)

    w.cleanups.append(remove)


@contextlib.contextmanager
def unreadable(path: Path) -> Iterator[None]:
    """``path`` is mode 000 for the code inside the block, even when we are root."""
    if NOBODY is not None:
        for item in path.parent.iterdir():
            os.chown(item, NOBODY, -1)
    path.chmod(0o000)
    try:
        if NOBODY is None:
            yield
        else:
            os.seteuid(NOBODY)
            try:
                yield
            finally:
                os.seteuid(0)
    finally:
        path.chmod(0o600)


async def buffer_unreadable(w: World) -> None:
    await w.start_bridge()
    await w.data_ready()
    await w.ticks(3)
    await w.stop_bridge()  # the database is down: everything so far waits in the buffer
    content = w.buffer_path.read_bytes()
    assert content.count(b"\n") > 10, "too little was buffered to mean anything"
    bridge = w.new_bridge()
    # A configuration problem (the CLI exits 2 on it), the OS's PermissionError chained.
    with unreadable(w.buffer_path), pytest.raises(BufferPathError) as refused:
        await bridge.start()
    assert isinstance(refused.value.__cause__, PermissionError), refused.value
    assert str(w.buffer_path) in str(refused.value), refused.value
    assert w.buffer_path.read_bytes() == content, "the failed start changed the buffer"
    w.pg.up()
    await w.start_bridge()  # readable again: the buffered rows are drained


LEGS = {"BRIDGE_POSITION_ROWS": "true"}

DATABASE_CASES = [
    # The outage rows also write position_greeks: its legs are checked like the nets.
    Case("db-down-at-start", database_down_at_start, setup=db_down, env=LEGS),
    Case("db-down-mid-run", database_down_mid_run, env=LEGS),
    Case("db-flapping-every-3s", database_flapping, env=LEGS),
    Case(
        "db-slower-than-statement-timeout",
        database_slower_than_the_deadline,
        env={"BRIDGE_DB_COMMAND_TIMEOUT": "1.5"},
    ),
    Case("db-table-dropped", table_dropped),
    Case("db-authentication-failing", authentication_failing, setup=auth_setup),
    Case(
        "db-buffer-full",
        buffer_full,
        # A small memory queue: it fills too, then rows are refused.
        env={"BRIDGE_BUFFER_MAX_BYTES": "4K", "BRIDGE_MEMORY_QUEUE_SIZE": "4"},
        allow_refusals=True,
        verify=refusals_reported,
        note="refused rows are counted and logged in full; none buffered or queued in memory is "
        "deleted",
    ),
    Case(
        "db-buffer-file-unreadable",
        buffer_unreadable,
        setup=private_buffer_dir,
        starts_bridge=True,
        note="start fails with BufferPathError (exit 2) naming the file; a later start drains it",
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in DATABASE_CASES])
async def test_database_fault(case: Case, db: TestDatabase, tmp_path: Path) -> None:
    assert_report(await run_case(case, db, tmp_path))


# -- gateway rows ----------------------------------------------------------------------------


def connection_events(w: World, event: str) -> list[str]:
    return [e.message for e in w.events if e.event == event]


async def until_state(w: World, *states: ConnectionState) -> None:
    await wait_until(lambda: w.state in states, timeout=15)


async def gateway_restart(w: World) -> None:
    await w.data_ready()
    await w.ticks(2)
    await w.sim.restart()  # every API socket closes
    await until_state(w, ConnectionState.BACKOFF)
    await w.advance_until(lambda: w.state is ConnectionState.LIVE, limit=60)
    assert connection_events(w, "reconnect"), "no reconnect logged"


async def daily_reset(w: World, kind: str) -> None:
    await w.data_ready()
    await w.ticks(1)
    accepted = w.sim.connections_accepted
    subscriptions = w.sim.count_requests(1)
    rows = len(w.submitted)
    await w.sim.daily_reset(kind, outage=30.0)
    await wait_until(lambda: w.live_bridge.status.stale, timeout=10)
    await w.ticks(5)  # 25 s of the 30 s outage: data is stale, nothing is written
    assert len(w.submitted) == rows, "rows were written from stale data"
    await w.advance_until(lambda: not w.live_bridge.status.stale, limit=30)
    await w.rows_flow(2)
    assert w.sim.connections_accepted == accepted, "the socket was not kept"
    resubscribed = w.sim.count_requests(1) > subscriptions
    assert resubscribed == (kind == "1101"), f"{kind}: resubscribed={resubscribed}"
    codes = [e.detail.get("code") for e in w.events if e.event in ("error", "reconnect")]
    assert 1100 in codes, codes
    assert int(kind) in codes, codes


async def reset_1102(w: World) -> None:
    await daily_reset(w, "1102")


async def reset_1101(w: World) -> None:
    await daily_reset(w, "1101")


async def client_id_in_use(w: World) -> None:
    await w.data_ready()
    await w.ticks(1)
    await w.sim.restart(stale_ids=30.0)  # the old session lingers: 326 for 30 s
    await until_state(w, ConnectionState.BACKOFF)
    await w.advance_until(lambda: w.state is ConnectionState.LIVE, limit=120)
    in_use = [e for e in w.events if e.detail.get("code") == 326]
    assert in_use, "no 326 logged"
    assert all(e.status == "error" for e in in_use)


async def frozen_gateway(w: World) -> None:
    await w.data_ready()
    await w.ticks(1)
    await w.sim.freeze(None)  # the socket stays open, nothing is answered
    # The next probe's reqCurrentTime goes unanswered and no other traffic arrives, so the
    # freeze is noticed within one probe interval (15 s; the probe's timeout is 0.5 s real).
    await w.advance_until(lambda: w.state is not ConnectionState.LIVE, limit=15.0, settle=1.0)
    assert w.state is ConnectionState.BACKOFF
    lost = connection_events(w, "disconnect")
    assert lost, "no disconnect logged"
    assert "probe" in lost[-1], lost
    await w.sim.unfreeze()


async def garbage_on_the_socket(w: World) -> None:
    await w.data_ready()
    await w.ticks(1)
    await w.sim.garbage(256, framed=False)  # breaks the framing for the rest of the session
    await w.advance_until(lambda: w.state is not ConnectionState.LIVE, limit=60)
    assert w.reached("connection", "BACKOFF"), "the corrupted session was never dropped"


async def refused_for_an_hour(w: World) -> None:
    await w.data_ready()
    await w.ticks(1)
    refused_at = w.clock.monotonic()
    await w.sim.refuse(3600.0)  # reopens by itself after an hour of fake time
    await w.sim.restart()
    await until_state(w, ConnectionState.BACKOFF)
    delays: list[float] = []
    while True:
        await until_state(w, ConnectionState.BACKOFF, ConnectionState.LIVE)
        wake = w.live_bridge._machine.wake_at
        if wake is None:
            break  # LIVE again
        delays.append(round(wake - w.clock.monotonic(), 3))
        await w.clock.advance(wake - w.clock.monotonic())
        await wait_until(lambda: w.state is not ConnectionState.CONNECTING, timeout=15)
    assert w.clock.monotonic() - refused_at >= 3600.0
    assert delays[:4] == [5.0, 10.0, 20.0, 60.0], delays[:6]
    assert set(delays[3:]) == {60.0}, delays
    started = [e for e in w.events if e.event == "connect" and "outcome" not in e.detail]
    failed = [e for e in w.events if e.event == "error" and e.detail.get("outcome") == "failed"]
    backoffs = [e for e in w.transitions("connection") if e.dest_state == "BACKOFF"]
    # Every attempt is logged: the first back-off follows the cut session, each later one
    # a failed attempt; each wait ends in an attempt, the last one connects.
    assert len(backoffs) == len(delays)
    assert len(failed) == len(delays) - 1
    assert len(started) == 1 + len(delays)  # + the very first connect at start
    assert [e.detail["attempt"] for e in failed] == list(range(1, len(failed) + 1))
    assert connection_events(w, "reconnect"), "the final success was not logged"


GATEWAY_CASES = [
    Case("gw-closed-restart", gateway_restart),
    Case("gw-reset-1102-socket-kept", reset_1102),
    Case("gw-reset-1101-resubscribe", reset_1101),
    Case("gw-326-client-id-in-use", client_id_in_use),
    Case("gw-frozen", frozen_gateway),
    Case("gw-garbage-on-socket", garbage_on_the_socket),
    Case("gw-refused-for-an-hour", refused_for_an_hour),
]


@pytest.mark.parametrize("case", [c.param() for c in GATEWAY_CASES])
async def test_gateway_fault(case: Case, db: TestDatabase, tmp_path: Path) -> None:
    assert_report(await run_case(case, db, tmp_path))


# -- Client Portal gateway rows --------------------------------------------------------------


def events_named(w: World, event: str) -> list[str]:
    return [e.message for e in w.events if e.event == event]


async def portal_session_expiry(w: World) -> None:
    await w.data_ready()
    await w.ticks(2)
    w.portal_sim.expire_session()  # authenticated: false until ssodh/init
    await w.advance_until(lambda: w.reached("connection", "BACKOFF"), limit=60)
    assert any("no longer authenticated" in m for m in events_named(w, "disconnect"))
    await w.advance_until(lambda: w.state is ConnectionState.LIVE, limit=120)


async def portal_429_storm(w: World) -> None:
    await w.data_ready()
    await w.ticks(2)
    w.portal_sim.rate_limit_storm(90.0)  # every request answered 429
    await w.run(120.0)
    assert w.portal_sim.count(status=429) > 0
    assert events_named(w, "rate_limited"), "the 429s were not logged"


async def portal_503_slow(w: World) -> None:
    await w.data_ready()
    await w.ticks(2)
    w.portal_sim.slow(60.0, delay=12.0)  # each answer waits 12 s, then 503
    await w.run(120.0)
    assert w.portal_sim.count(status=503) > 0
    assert any("probe" in m for m in events_named(w, "disconnect")), "not detected as frozen"


async def portal_frozen(w: World) -> None:
    await w.data_ready()
    await w.ticks(2)
    w.portal_sim.freeze(60.0)  # requests are accepted and never answered
    await w.run(120.0)
    assert any("probe" in m for m in events_named(w, "disconnect")), "not detected as frozen"


async def portal_competing(w: World) -> None:
    await w.data_ready()
    await w.ticks(2)
    w.portal_sim.competing(120.0)  # another login holds the brokerage session
    await w.run(200.0)
    assert events_named(w, "competing"), "the competing session was not logged"
    assert any("competing" in m for m in events_named(w, "disconnect"))


PORTAL_CASES = [
    Case("portal-session-expiry", portal_session_expiry, mode="PORTAL"),
    Case("portal-429-storm", portal_429_storm, mode="PORTAL"),
    Case("portal-503-slow-answers", portal_503_slow, mode="PORTAL"),
    Case("portal-frozen", portal_frozen, mode="PORTAL"),
    Case("portal-competing-session", portal_competing, mode="PORTAL"),
]


@pytest.mark.parametrize("case", [c.param() for c in PORTAL_CASES])
async def test_portal_fault(case: Case, db: TestDatabase, tmp_path: Path) -> None:
    assert_report(await run_case(case, db, tmp_path))


# -- configuration rows ----------------------------------------------------------------------

# One bad value per setting (the full catalogue of bad values is in tests/config/test_config.py).
BAD_VALUES: dict[str, str] = {
    "IB_API_MODE": "TWS",
    "IB_SOCKET_HOST": "local host",
    "IB_SOCKET_PORT": "65536",
    "IB_CLIENT_ID": "0",
    "IB_ACCOUNT": "U1,U2",
    "IB_CONNECT_TIMEOUT": "0",
    "IB_PROBE_INTERVAL": "-1",
    "IB_PROBE_TIMEOUT": "nan",
    "IB_MARKET_DATA_TYPE": "5",
    "IBKR_GATEWAY_URL": "ftp://gw:5001",
    "IBKR_GATEWAY_CA": "/nonexistent/ca.pem",
    "IBKR_VERIFY_TLS": "nope",
    "IBKR_TICKLE_INTERVAL": "soon",
    "BRIDGE_POLL_INTERVAL": "inf",
    "BRIDGE_BUFFER_PATH": ".",
    "BRIDGE_BUFFER_MAX_BYTES": "1.5G",
    "BRIDGE_MEMORY_QUEUE_SIZE": "-1",
    "BRIDGE_RETRY_INTERVAL": "5s",
    "BRIDGE_DB_CONNECT_TIMEOUT": "-Infinity",
    "BRIDGE_DB_COMMAND_TIMEOUT": "0",
    "BRIDGE_BATCH_SIZE": "many",
    "BRIDGE_RESET_WINDOW": "23:40",
    "BRIDGE_RESET_RESUME": "00:60",
    "BRIDGE_RESET_TZ": "Mars/Olympus_Mons",
    "BRIDGE_WEEKLY_WINDOW": "Fri 23:00",
    "BRIDGE_BACKOFF": "5,,10",
    "BRIDGE_STEADY_RETRY": "-1",
    "BRIDGE_HTTP_PORT": "http",
    "BRIDGE_HTTP_HOST": "0.0.0.0 1",
    "BRIDGE_LOG_FORMAT": "xml",
    "BRIDGE_LOG_LEVEL": "loud",
    "BRIDGE_STALE_AFTER": "-5",
    "BRIDGE_LEG_GRACE": "0",
    "BRIDGE_MISSING_LEGS": "zero",
    "BRIDGE_GREEKS_FALLBACK": "bs",
    "BRIDGE_RISK_FREE_RATE": "4.5",
    "BRIDGE_POSITION_ROWS": "maybe",
    "BRIDGE_RETENTION_DAYS": "0",
    "DATABASE_URL": "mysql://me:s3cret-pw@db/x",
    "PGPORT": "0",
}
# Taken verbatim by design: any printable text is good (control characters and over-long
# values are refused, see tests/config/test_config.py).
FREE_TEXT = {"PGHOST", "PGUSER", "PGPASSWORD", "PGDATABASE"}
SECRET = "s3cret-pw"


def test_every_setting_has_a_row() -> None:
    assert set(BAD_VALUES) | FREE_TEXT == {key.env for key in setting_keys()}


@pytest.mark.parametrize("key", [key.env for key in setting_keys()])
def test_bad_setting(key: str) -> None:
    case = f"config-{key}"
    if key in FREE_TEXT:
        settings = load_settings({key: "any text \\ 'quoted' ${NOT_EXPANDED}"}, use_dotenv=False)
        assert settings.database.connect_kwargs()
        record(Outcome(case, "passed", note="free text: every value is accepted verbatim"))
        return
    try:
        with pytest.raises(ConfigError) as caught:
            load_settings({key: BAD_VALUES[key]}, use_dotenv=False)
        problems = caught.value.problems
        assert len(problems) == 1, problems
        assert problems[0].startswith(f"{key}: "), problems
        assert SECRET not in str(caught.value), "a password was shown"
    except BaseException as exc:
        record(Outcome(case, f"FAILED: {type(exc).__name__}: {exc}"))
        raise
    record(Outcome(case, "passed", note=f"{redact_dsn(BAD_VALUES[key])!r} -> {problems[0]}"))


def test_service_exits_2_naming_every_bad_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "IBKR_", "BRIDGE_"))}
    env.update(BAD_VALUES)
    env["PYTHONPATH"] = str(ROOT)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ibkr_bridge", "run", "--env-file", str(tmp_path / "none")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
        named = {line.split(":", 1)[0].strip() for line in done.stderr.splitlines()[1:]}
        assert named == set(BAD_VALUES), set(BAD_VALUES) ^ named
        assert f"({len(BAD_VALUES)} problems)" in done.stderr.splitlines()[0]
        assert SECRET not in done.stderr
    except BaseException as exc:
        record(Outcome("config-cli-all-bad", f"FAILED: {type(exc).__name__}: {exc}"))
        raise
    record(Outcome("config-cli-all-bad", "passed", note=f"exit 2, {len(named)} settings named"))


# -- the invariants can fail -----------------------------------------------------------------

SABOTAGE = {
    # what is done to the database after a clean run -> what the invariants must say
    "lost": (
        "DELETE FROM portfolio_greeks WHERE id = (SELECT max(id) FROM portfolio_greeks)",
        "submitted rows lost",
    ),
    "duplicated": (
        "INSERT INTO portfolio_greeks (timestamp, contract, delta, legs, bridge_key) "
        "SELECT timestamp, contract, delta, legs, 'x' || bridge_key FROM portfolio_greeks LIMIT 1",
        "duplicated rows",
    ),
    "wrong-value": ("UPDATE portfolio_greeks SET vega = vega + 1e-6 WHERE id = 1", "differ"),
    "sentinel": ("UPDATE portfolio_greeks SET theta = -2 WHERE id = 2", "not data"),
    "empty-row": ("UPDATE portfolio_greeks SET legs = 0 WHERE id = 3", "rows from nothing"),
    "reordered": (
        "UPDATE portfolio_greeks SET timestamp = timestamp - interval '1 hour' "
        "WHERE id = (SELECT max(id) FROM portfolio_greeks)",
        "out of timestamp order",
    ),
    "event-lost": (
        "DELETE FROM api_logs WHERE id = (SELECT min(id) FROM api_logs WHERE machine IS NOT NULL)",
        "transitions",
    ),
}


def _write_line(path: Path) -> None:
    path.write_text("{}\n")


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        *[("SOCKET", kind) for kind in [*SABOTAGE, "buffer-left", "quarantined", "refused"]],
        ("SOCKET", "recomputation"),
        ("PORTAL", "recomputation"),
        ("PORTAL", "lost"),
    ],
)
async def test_invariants_catch_sabotage(
    mode: str, kind: str, db: TestDatabase, tmp_path: Path
) -> None:
    """Each invariant fails when its property is broken (they are not tautologies)."""
    async with make_world(db, tmp_path, mode=mode) as w:
        await w.start_bridge()
        await w.data_ready()
        await w.ticks(3)
        await w.stop_bridge()
        clean = await check_invariants(w, "clean")
        assert not clean.problems, clean.problems
        expected: str
        if kind in SABOTAGE:
            statement, expected = SABOTAGE[kind]
            await w.db.fetch(statement)
        elif kind == "recomputation":
            # The stored rows still equal what the bridge computed; only the independent
            # recomputation moves (a dearer underlying): it alone must object.
            stock = next(p for p in w.portfolio.positions() if p.instrument.sec_type == "STK")
            w.portfolio.set_spot(stock.conid, w.portfolio.spot(stock.conid) * 1.01)
            expected = "differ from the recomputation"
        elif kind == "buffer-left":
            _write_line(w.buffer_path)
            expected = "buffer was not drained"
        elif kind == "quarantined":
            _write_line(Path(f"{w.buffer_path}.quarantine"))
            expected = "quarantine is not empty"
        else:
            w.refusals.keys.append(w.submitted[-1].key)
            expected = "refused by a full buffer"
        report = await check_invariants(w, kind)
    assert any(expected in p for p in report.problems), report.problems
