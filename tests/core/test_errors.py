"""The one error tree: every exception class lives in core.errors, under BridgeError."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ibkr_bridge
from ibkr_bridge.core import error_tree, errors

PACKAGE = Path(ibkr_bridge.__file__).parent
CLASSES = [
    value
    for value in vars(errors).values()
    if isinstance(value, type) and issubclass(value, BaseException)
]
# Defined in core.errors already; their modules swap the definition for the import when the
# branches that split those modules are merged. Empty this set then.
NOT_YET_SWAPPED: set[str] = set()


def _exception_classes_defined_outside_errors() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(errors.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # A private exception used for control flow inside one module is not an API.
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {ast.unparse(base) for base in node.bases}
            if node.name.endswith(("Error", "Exception")) or any(
                base.endswith(("Error", "Exception")) for base in bases
            ):
                found.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    return found


def test_no_exception_class_is_defined_outside_core_errors() -> None:
    outside = set(_exception_classes_defined_outside_errors())
    assert outside - NOT_YET_SWAPPED == set()
    assert all(hasattr(errors, entry.split(": ")[1]) for entry in NOT_YET_SWAPPED)


def test_every_error_is_a_bridge_error_and_keeps_its_builtin_base() -> None:
    assert len(CLASSES) == 22
    assert all(issubclass(cls, errors.BridgeError) for cls in CLASSES)
    assert issubclass(errors.IllegalTransition, ValueError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.RecordFormatError, ValueError)
    assert issubclass(errors.FaultScriptError, ValueError)
    assert issubclass(errors.FrameError, ValueError)
    assert issubclass(errors.RejectedFileChangedError, OSError)
    assert issubclass(errors.CertificateError, RuntimeError)
    assert issubclass(errors.BufferPathError, errors.JsonlBufferError)
    assert issubclass(errors.NeedsLoginError, errors.GatewayError)


def test_core_errors_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(errors.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert all(name.split(".")[0] in sys.stdlib_module_names | {"__future__"} for name in imported)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("ibkr_bridge.config", "ConfigError"),
        ("ibkr_bridge.core.records", "RecordFormatError"),
        ("ibkr_bridge.core.machines", "IllegalTransition"),
        ("ibkr_bridge.storage.buffer", "JsonlBufferError"),
        ("ibkr_bridge.storage.buffer", "BufferLockedError"),
        ("ibkr_bridge.storage.buffer", "BufferFullError"),
        ("ibkr_bridge.storage.buffer", "BufferFormatError"),
        ("ibkr_bridge.storage.buffer", "BufferPathError"),
        ("ibkr_bridge.feeds.portal", "NeedsLoginError"),
        ("ibkr_bridge.sim.faults", "FaultScriptError"),
        ("ibkr_bridge.sim.tls", "CertificateError"),
        ("ibkr_bridge.ops.doctor", "HandshakeError"),
    ],
)
def test_where_an_error_was_defined_it_is_the_same_class(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_every_module_of_the_package_imports() -> None:
    # A class moved without its import would only fail where it is raised; import them all.
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="ibkr_bridge."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def test_the_drawings_match_the_classes() -> None:
    assert error_tree.stale_files() == [], "regenerate: python -m ibkr_bridge.core.error_tree"


def test_the_drawing_names_every_class_once() -> None:
    tree = error_tree.render_tree()
    for cls in CLASSES:
        named = [line.split("── ")[-1].split()[0] for line in tree.splitlines()]
        assert named.count(cls.__name__) == 1


def test_a_stale_drawing_is_found_and_regenerated(tmp_path: Path) -> None:
    doc = tmp_path / "architecture.md"
    doc.write_text(f"intro\n{error_tree.START}\nold drawing\n{error_tree.END}\nrest\n")
    assert error_tree.stale_files([doc]) == [doc]
    fixed = error_tree.with_tree(doc.read_text(), doc)
    assert fixed.startswith("intro\n")
    assert fixed.endswith(f"{error_tree.END}\nrest\n")
    assert "├── ConfigError (ValueError)" in fixed
    doc.write_text(fixed)
    assert error_tree.stale_files([doc]) == []


def test_the_generator_checks_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ibkr_bridge.core.error_tree", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
