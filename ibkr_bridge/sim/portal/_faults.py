"""The gateway's timed faults: rate-limit storms, slow, frozen or garbage answers, odd Greeks.

Each fault sets a deadline (``_set_fault``) that the request gate and the snapshot read;
position and spot changes come from :class:`~ibkr_bridge.sim.faults.PortfolioFaults`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ibkr_bridge.sim.faults import PortfolioFaults
from ibkr_bridge.sim.portal._api import DATA_ENDPOINTS, GREEK_FIELD_OF, SENTINEL_MODES, log
from ibkr_bridge.sim.portal._session import Session


class Faults(Session, PortfolioFaults):
    """The fault methods a test or a fault script calls (session faults: :class:`Session`)."""

    def clear_faults(self) -> None:
        """End every timed fault (not the session state: use :meth:`human_login`)."""
        self._fault_until.clear()
        self._sentinel_conids = None
        self._sentinel_iv = False
        self._fixed_conids = None

    def rate_limit_storm(self, seconds: float | None = None) -> None:
        """Every request is answered 429 (not counted as the client's violation)."""
        log.info("fault: rate-limit storm (%s s)", seconds)
        self._set_fault("storm", seconds)

    def slow(self, seconds: float | None = None, *, delay: float | None = None) -> None:
        """Each request waits ``delay`` (default ``slow_delay``) on the clock, then 503."""
        if delay is not None:
            self.slow_delay = delay
        log.info("fault: slow gateway (%s s, %.1fs per answer)", seconds, self.slow_delay)
        self._set_fault("slow", seconds)

    def freeze(self, seconds: float | None = None) -> None:
        """Requests arriving in the next ``seconds`` are accepted and never answered."""
        log.info("fault: freeze (%s s)", seconds)
        self._set_fault("freeze", seconds)

    def garbage(self, seconds: float | None = None) -> None:
        """Answers are 200 with non-JSON or wrong-shape bodies."""
        log.info("fault: garbage answers (%s s)", seconds)
        self._set_fault("garbage", seconds)

    def sentinel_greeks(
        self,
        seconds: float | None = None,
        *,
        mode: str = "missing",
        conids: Iterable[int] | None = None,
        implied_vol: bool = False,
    ) -> None:
        """Greek fields (7308-7311) of ``conids`` (default all) are absent (``missing``),
        ``""`` (``empty``), ``"-2"`` (``minus2``) or ``"N/A"`` (``na``); with
        ``implied_vol`` field 7633 ("Implied Vol. %") too, prices and bid/ask still served.

        Client Portal marks "not computed" by an empty or absent field; ``minus2`` is there
        to show that a client reads ``"-2"`` as the number it is (the socket API's sentinel
        is not one in Client Portal strings). Outside market hours the gateway may leave
        the implied volatility empty as well: a client then has only the option's quote."""
        if mode not in SENTINEL_MODES:
            raise ValueError(f"mode must be one of {SENTINEL_MODES}, got {mode!r}")
        log.info(
            "fault: sentinel greeks %s (%s s, implied vol too: %s)", mode, seconds, implied_vol
        )
        self._sentinel_mode = mode
        self._sentinel_conids = frozenset(conids) if conids is not None else None
        self._sentinel_iv = implied_vol
        self._set_fault("sentinel", seconds)

    def fixed_greeks(
        self,
        values: Mapping[str, str],
        seconds: float | None = None,
        *,
        conids: Iterable[int] | None = None,
    ) -> None:
        """Snapshot Greeks of ``conids`` (default every option) are sent as the given strings,
        e.g. ``{"theta": "-2.000"}``: a real value that happens to equal IB's socket sentinel.
        Keys are ``delta``, ``gamma``, ``theta``, ``vega``."""
        unknown = set(values) - set(GREEK_FIELD_OF)
        if unknown:
            raise ValueError(f"unknown Greek(s) {sorted(unknown)}; use {sorted(GREEK_FIELD_OF)}")
        log.info("fault: fixed greeks %s (%s s)", dict(values), seconds)
        self._fixed_greeks = {GREEK_FIELD_OF[k]: str(v) for k, v in values.items()}
        self._fixed_conids = frozenset(conids) if conids is not None else None
        self._set_fault("fixed", seconds)

    def echo_session(
        self,
        seconds: float | None = None,
        *,
        status: int = 500,
        endpoints: Iterable[str] | None = None,
    ) -> None:
        """Data endpoints (default: all but ``/tickle`` and auth status) answer ``status``
        with an error body that echoes the session token and cookie, as a gateway that
        reflects its request context into errors does: a client must not log it verbatim."""
        log.info("fault: error bodies echo the session (%s s)", seconds)
        self._echo_status = status
        self._echo_endpoints = frozenset(endpoints) if endpoints is not None else DATA_ENDPOINTS
        self._set_fault("echo", seconds)

    def huge_body(
        self,
        nbytes: int,
        seconds: float | None = None,
        *,
        chunked: bool = False,
        endpoints: Iterable[str] | None = None,
    ) -> None:
        """Data endpoints (default as :meth:`echo_session`) answer 200 with a JSON array of
        zeros of exactly ``nbytes`` bytes, streamed (the simulator never holds it), with a
        ``Content-Length`` or, ``chunked``, without one: a client must refuse it unread."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        log.info("fault: %d-byte answers (chunked=%s, %s s)", nbytes, chunked, seconds)
        self._huge_bytes = nbytes
        self._huge_chunked = chunked
        self._huge_endpoints = frozenset(endpoints) if endpoints is not None else DATA_ENDPOINTS
        self._set_fault("huge", seconds)
