"""Developer sessions: ``nox -s lint typecheck tests`` (``python3 dev.py test`` runs the suite)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PATHS = ["ibkr_bridge", "tests", "examples", "benchmarks", "noxfile.py", "dev.py"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The whole suite against the real PostgreSQL (embedded when none is running)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff", "import-linter")
    session.run("ruff", "check", *PATHS)
    session.run("ruff", "format", "--check", *PATHS)
    # The layers and forbidden imports of pyproject's [tool.importlinter] (no cycles, pure core).
    session.run("lint-imports", "--no-cache")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """``mypy --strict`` over the package, tests and benchmarks (pyproject's [tool.mypy])."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", *session.posargs)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The documentation site, ``mkdocs build --strict`` (every warning fails) into build/site."""
    session.install(".[docs]")
    # Material prints a notice about its future at every build; the build output stays ours.
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})
