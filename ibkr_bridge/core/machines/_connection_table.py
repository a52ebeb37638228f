"""The connection watchdog as data: its states, its rule table and the documented spec.

The model that runs this table is :class:`~ibkr_bridge.core.machines.connection.ConnectionMachine`;
``docs/state-machines.md`` is generated from :data:`SPEC`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from ibkr_bridge.core.machines.base import MachineSpec, Rule, Transition
from ibkr_bridge.core.records import Status


class ConnectionState(StrEnum):
    DISCONNECTED = "DISCONNECTED"
    CONNECTING = "CONNECTING"
    LIVE = "LIVE"
    RESET_WAIT = "RESET_WAIT"
    BACKOFF = "BACKOFF"
    STOPPED = "STOPPED"


_S = ConnectionState

TRANSITIONS: Final[tuple[Rule, ...]] = (
    Rule("start", _S.DISCONNECTED, _S.CONNECTING, note="the watchdog starts"),
    Rule("connected", _S.CONNECTING, _S.LIVE, note="handshake done; start writing"),
    Rule(
        "connect_failed",
        _S.CONNECTING,
        _S.RESET_WAIT,
        conditions=("in_reset_window",),
        note="failed during the nightly reset or weekly maintenance: wait for the resume time",
    ),
    Rule(
        "connect_failed",
        _S.CONNECTING,
        _S.BACKOFF,
        unless=("in_reset_window",),
        note="failed: wait the next back-off delay",
    ),
    Rule(
        "disconnected",
        _S.LIVE,
        _S.RESET_WAIT,
        conditions=("in_reset_window",),
        note="lost during the nightly reset or weekly maintenance: stop writing, wait",
    ),
    Rule(
        "disconnected",
        _S.LIVE,
        _S.BACKOFF,
        unless=("in_reset_window",),
        note="lost: stop writing, wait the first back-off delay",
    ),
    Rule(
        "data_lost",
        _S.LIVE,
        None,
        note="IB code 1100: data is stale, writing pauses",
    ),
    Rule(
        "data_restored",
        _S.LIVE,
        None,
        note="IB code 1101 (resubscribe) or 1102 (data kept): writing resumes",
    ),
    Rule(
        "retry_due",
        _S.BACKOFF,
        _S.CONNECTING,
        conditions=("backoff_elapsed",),
        note="the back-off delay is over: connect again",
    ),
    Rule(
        "reset_over",
        _S.RESET_WAIT,
        _S.CONNECTING,
        conditions=("resume_reached",),
        note="the reset or maintenance window is over: connect again",
    ),
    *(
        Rule("stop", state, _S.STOPPED, note="shutdown")
        for state in ConnectionState
        if state is not _S.STOPPED
    ),
)

SPEC: Final = MachineSpec(
    name="connection",
    title="SOCKET connection watchdog",
    summary=(
        "Keeps the ib_async connection to the Gateway up without ever giving up. With the "
        "default `WatchdogPolicy`, a failure inside IBKR's nightly reset window "
        "(23:40:00-23:59:59 New York time, inclusive) waits until the next 00:05 New York "
        "time, and one inside the weekly maintenance window (Friday 23:00 to Saturday 03:00 "
        "New York time) waits until its end; any other failure backs off 5, 10, 20 s and "
        "then retries every 60 s. Rows are written only while LIVE and not stale."
    ),
    states=ConnectionState,
    initial=ConnectionState.DISCONNECTED,
    rules=TRANSITIONS,
    state_docs={
        "DISCONNECTED": "Not started yet.",
        "CONNECTING": "A connect attempt is under way.",
        "LIVE": "Connected; the writer runs (paused while `stale`).",
        "RESET_WAIT": "Waiting out IBKR's nightly reset or weekly maintenance.",
        "BACKOFF": "Waiting `wake_at` before the next attempt.",
        "STOPPED": "Shut down; terminal.",
    },
    guard_docs={
        "in_reset_window": (
            "`wall` is inside the nightly reset window or the weekly maintenance window "
            "(New York time)"
        ),
        "backoff_elapsed": "`now >= wake_at`",
        "resume_reached": "`now >= wake_at` or `wall >= resume_at`",
    },
)

#: States whose only way on is a deadline: the driver sleeps until ``wake_at``.
WAITING: Final = frozenset({_S.BACKOFF, _S.RESET_WAIT})


def transition_status(t: Transition) -> Status:
    """The ``api_logs`` status of a transition: entering a wait is a warning."""
    return "warning" if t.dest in WAITING else "info"
