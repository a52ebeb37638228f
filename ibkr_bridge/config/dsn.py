"""The database settings: DATABASE_URL or PG* variables, DSN checks, redaction."""

# _setting() returns an attrs field, not a shared mutable default, which RUF009 cannot see.

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from attrs import frozen

from ibkr_bridge.config._checks import _PORTS, _integer, _optional, _text
from ibkr_bridge.config._keys import _record_problems, _setting
from ibkr_bridge.config._values import _INT, _REDACTED, _show
from ibkr_bridge.core.errors import ConfigError

# --- redaction -------------------------------------------------------------------------

_PASSWORD_PARAM = re.compile(r"(?i)(password\s*=\s*)('[^']*'|[^&\s#]*)")


def redact_dsn(text: str) -> str:
    """``text`` with any password replaced by ``***`` (URL userinfo and ``password=``).

    It errs towards hiding too much: the userinfo is everything before the *last* ``@``,
    because passwords written by hand often contain an unescaped ``@`` or ``/``.
    """
    scheme_end = text.find("://")
    start = 0 if scheme_end < 0 else scheme_end + 3
    at = text.rfind("@")
    if at > start:
        userinfo = text[start:at]
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            text = f"{text[:start]}{user}:{_REDACTED}{text[at:]}"
    return _PASSWORD_PARAM.sub(rf"\g<1>{_REDACTED}", text)


def _dsn(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError("is not a string")
    shown = redact_dsn(value)  # the password never reaches an error message
    try:
        scheme = urlsplit(value).scheme
    except ValueError:
        raise ValueError(f"{_show(shown)} is not a valid URL") from None
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"{_show(shown)} is not a postgres:// or postgresql:// URL")
    if any(c.isspace() for c in value):
        raise ValueError(f"{_show(shown)} contains blanks")
    # What asyncpg would refuse only when it first connects, long after startup: found
    # here it is a ConfigError listed with every other problem, not an endless outage.
    problems = _dsn_problems(value)
    if problems:
        raise ValueError(f"{_show(shown)}: {'; '.join(problems)}")


_SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TARGET_SESSION_ATTRS: Final = (
    "any",
    "primary",
    "standby",
    "prefer-standby",
    "read-write",
    "read-only",
)
_DSN_CHOICES: Final = {
    "sslmode": _SSLMODES,
    "target_session_attrs": _TARGET_SESSION_ATTRS,
    "gsslib": ("gssapi", "sspi"),
}
_IPV6_HOSTSPEC = re.compile(r"\[[^\]]+\](?::(.*))?")


def _dsn_port_problem(port: str, where: str) -> str | None:
    if _INT.fullmatch(port) and 1 <= int(port) <= 65535:
        return None
    return f"port {port!r} {where}is not a number 1..65535"


def _dsn_problems(value: str) -> list[str]:
    """What a URL of the right scheme still gets wrong, parsed the way asyncpg parses it.

    Messages never quote the userinfo: only ports, parameter names and their values.
    """
    parts = urlsplit(value)
    netloc_end = value.find("://") + 3 + len(parts.netloc)
    if value.rfind("@") >= netloc_end or parts.netloc.count("@") > 1:
        # An unescaped "/", "?", "#" or "@" in the password moves the split points: what
        # would be read as port, host or parameters is then partly the password. Say only
        # that, quoting nothing.
        return ["the user or password contains '/', '?', '#' or '@': percent-encode it"]
    problems: list[str] = []
    hostlist = parts.netloc.rpartition("@")[2]
    if hostlist:
        for hostspec in hostlist.split(","):
            if hostspec.startswith("["):
                match = _IPV6_HOSTSPEC.fullmatch(hostspec)
                port = match.group(1) if match else None
                if match is None:
                    problems.append(f"{hostspec!r} is not a valid [IPv6]:port host")
            else:
                port = hostspec.partition(":")[2] if ":" in hostspec else None
            if port:  # "host:" with an empty port means the default port
                problem = _dsn_port_problem(port, "")
                if problem:
                    problems.append(problem)
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        return [*problems, "the query string is not name=value pairs joined by &"]
    for name, values in query.items():
        given = values[-1]  # asyncpg uses the last one
        if name == "port":
            for port in given.split(","):
                problem = _dsn_port_problem(port, "(the port parameter) ")
                if problem:
                    problems.append(problem)
        elif name in _DSN_CHOICES and given not in _DSN_CHOICES[name]:
            allowed = ", ".join(_DSN_CHOICES[name])
            problems.append(f"{name}={given!r} is not one of {allowed}")
    return problems


@frozen(kw_only=True, repr=False)
class DatabaseConfig:
    """Where the database is: ``DATABASE_URL``, else the libpq ``PG*`` variables.

    Neither ``repr`` nor ``str`` shows a password; use :meth:`redacted` in logs and
    :attr:`dsn` / :meth:`connect_kwargs` only where the connection is made.
    """

    dsn: str | None = _setting(
        "DATABASE_URL",
        "postgres:// or postgresql:// URL",
        "",
        "PostgreSQL connection URL; empty = the PG* variables below",
        str | None,
        _dsn,
        secret=True,
        max_length=4096,
    )
    host: str | None = _setting(
        "PGHOST",
        "host",
        "",
        "Database host when DATABASE_URL is empty",
        str | None,
        _text,
        max_length=1024,
    )
    port: int | None = _setting(
        "PGPORT",
        "port",
        "",
        "Database port when DATABASE_URL is empty",
        int | None,
        _optional(_integer),
        bounds=_PORTS,
    )
    user: str | None = _setting(
        "PGUSER",
        "text",
        "",
        "Database user when DATABASE_URL is empty",
        str | None,
        _text,
        max_length=63,
    )
    password: str | None = _setting(
        "PGPASSWORD",
        "text",
        "",
        "Database password when DATABASE_URL is empty (never logged; taken verbatim)",
        str | None,
        _text,
        secret=True,
        strip=False,
        max_length=1024,
    )
    database: str | None = _setting(
        "PGDATABASE",
        "text",
        "",
        "Database name when DATABASE_URL is empty",
        str | None,
        _text,
        max_length=63,
    )

    def __attrs_post_init__(self) -> None:
        problems = _record_problems(self)
        if problems:
            raise ConfigError(problems)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect`` / ``create_pool`` (or ``Store.open``).

        The ``PG*`` values are passed explicitly because they may come from ``.env``, which
        asyncpg does not read; unset ones are left to asyncpg's own defaults.
        """
        if self.dsn is not None:
            return {"dsn": self.dsn}
        pairs = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
        }
        return {name: value for name, value in pairs.items() if value is not None}

    def redacted(self) -> str:
        """A description for logs, with the password replaced by ``***``."""
        if self.dsn is not None:
            return redact_dsn(self.dsn)
        shown: dict[str, Any] = dict(self.connect_kwargs())
        if "password" in shown:
            shown["password"] = _REDACTED
        if not shown:
            return "libpq defaults (PG* variables of the process)"
        return "PG* variables: " + ", ".join(f"{name}={value}" for name, value in shown.items())

    def __repr__(self) -> str:
        dsn = None if self.dsn is None else redact_dsn(self.dsn)
        password = None if self.password is None else _REDACTED
        return (
            f"DatabaseConfig(dsn={dsn!r}, host={self.host!r}, port={self.port!r}, "
            f"user={self.user!r}, password={password!r}, database={self.database!r})"
        )

    def __str__(self) -> str:
        return self.redacted()
