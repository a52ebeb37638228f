"""The drawing of the error hierarchy, generated from the classes of :mod:`~.core.errors`.

The same drawing stands between ``<!-- error-tree:start -->`` and ``<!-- error-tree:end -->``
in two places: the docstring of ``ibkr_bridge/core/errors.py`` and ``docs/architecture.md``.
A test fails when either differs from :func:`render_tree`; regenerate both with::

    python -m ibkr_bridge.core.error_tree            # rewrites the two blocks
    python -m ibkr_bridge.core.error_tree --check    # exit 1 if either is out of date

Each line names a class, its builtin bases in parentheses (a ``ConfigError`` is also a
``ValueError``) and the first line of its docstring, wrapped to fit.
"""

from __future__ import annotations

import argparse
import builtins
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ibkr_bridge.core import errors

__all__ = ["ARCHITECTURE", "ERRORS_SOURCE", "main", "render_tree", "stale_files", "with_tree"]

START: Final = "<!-- error-tree:start -->"
END: Final = "<!-- error-tree:end -->"
ERRORS_SOURCE: Final = Path(errors.__file__)
ARCHITECTURE: Final = ERRORS_SOURCE.parents[2] / "docs" / "architecture.md"
REGENERATE: Final = "python -m ibkr_bridge.core.error_tree"
WIDTH: Final = 96  # the drawing sits indented by 4 in a docstring of 100-column lines


def _classes() -> list[type[BaseException]]:
    """The module's exception classes, in the order they are defined."""
    return [
        value
        for value in vars(errors).values()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    ]


def _parent(cls: type, ours: Sequence[type]) -> type | None:
    return next((base for base in cls.__bases__ if base in ours), None)


def _label(cls: type) -> str:
    extra = [base.__name__ for base in cls.__bases__ if getattr(builtins, base.__name__, None)]
    extra = [name for name in extra if name != "Exception"]
    return f"{cls.__name__} ({', '.join(extra)})" if extra else cls.__name__


def _summary(cls: type) -> str:
    """The docstring's first line, as a note: no literal quotes, no final period."""
    first = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    return first.replace("``", "").strip().removesuffix(".")


def render_tree() -> str:
    """The hierarchy as box-drawing lines (no trailing newline)."""
    ours = _classes()
    children: dict[type | None, list[type]] = {}
    for cls in ours:
        children.setdefault(_parent(cls, ours), []).append(cls)
    rows: list[tuple[str, str, str]] = []  # (prefix + label, continuation prefix, summary)

    def walk(cls: type, lead: str, branch: str, below: str) -> None:
        kids = children.get(cls, [])
        # Under a wrapped summary the bar goes on down to the class's own children.
        rows.append(
            (lead + branch + _label(cls), lead + below + ("│" if kids else ""), _summary(cls))
        )
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            walk(kid, lead + below, "└── " if last else "├── ", "    " if last else "│   ")

    for root in children.get(None, []):
        walk(root, "", "", "")
    column = max(len(head) for head, _, _ in rows) + 2
    lines: list[str] = []
    for head, bar, summary in rows:
        wrapped = textwrap.wrap(summary, max(WIDTH - column, 20)) or [""]
        lines.append(f"{head:<{column}}{wrapped[0]}".rstrip())
        lines.extend(f"{bar:<{column}}{more}" for more in wrapped[1:])
    return "\n".join(lines)


def _block(path: Path) -> str:
    tree = render_tree()
    if path.suffix == ".py":
        return "\n" + textwrap.indent(tree, "    ") + "\n\n"
    return "\n```text\n" + tree + "\n```\n"


def with_tree(text: str, path: Path) -> str:
    """``text`` with its block between the markers replaced by the current drawing."""
    pattern = re.compile(re.escape(START) + r"\n.*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{path}: no {START} ... {END} block")
    return pattern.sub(lambda _: START + "\n" + _block(path) + END, text, count=1)


def stale_files(paths: Sequence[Path] = (ERRORS_SOURCE, ARCHITECTURE)) -> list[Path]:
    """The files whose drawing differs from the classes."""
    stale = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if with_tree(text, path) != text:
            stale.append(path)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if a drawing is out of date"
    )
    args = parser.parse_args(argv)
    paths = [p for p in (ERRORS_SOURCE, ARCHITECTURE) if p.exists()]
    if args.check:
        for path in stale_files(paths):
            sys.stderr.write(f"{path} is out of date; run: {REGENERATE}\n")
            return 1
        return 0
    for path in paths:
        text = path.read_text(encoding="utf-8")
        path.write_text(with_tree(text, path), encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
