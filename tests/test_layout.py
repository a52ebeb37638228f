"""The tests mirror the package: one test folder per package folder, each a Python package.

A test of ``ibkr_bridge/storage/sink/`` lives in ``tests/storage/sink/``, so a newcomer finds
the tests of a module where the module is. Only the cross-cutting folders (whole-system runs,
the fault matrix, the soak, the documentation, the benchmarks) have no package folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ibkr_bridge"
TESTS = ROOT / "tests"
CROSS_CUTTING = frozenset({"bench", "docs", "e2e", "faults", "soak"})


def package_folders(package: Path) -> list[Path]:
    """Every folder of the package (itself included) that is a Python package, relative."""
    return sorted(
        init.parent.relative_to(package)
        for init in package.rglob("__init__.py")
        if "__pycache__" not in init.parts
    )


def source_folders(tests: Path) -> list[Path]:
    """Every folder under tests/ (itself included) holding Python files, relative."""
    return sorted(
        {
            source.parent.relative_to(tests)
            for source in tests.rglob("*.py")
            if "__pycache__" not in source.parts
        }
    )


def missing_test_folders(package: Path, tests: Path) -> list[str]:
    """Package folders with no test package of the same relative path."""
    return [
        str(folder)
        for folder in package_folders(package)
        if not (tests / folder / "__init__.py").is_file()
    ]


def unmirrored_test_folders(package: Path, tests: Path) -> list[str]:
    """Test folders naming neither a package folder nor a module (cross-cutting ones aside)."""
    unmirrored = []
    for folder in source_folders(tests):
        if folder.parts and folder.parts[0] in CROSS_CUTTING:
            continue
        if not ((package / folder).is_dir() or (package / folder).with_suffix(".py").is_file()):
            unmirrored.append(str(folder))
    return unmirrored


def folders_without_init(tests: Path) -> list[str]:
    """Test folders that are not packages (their modules would be imported by bare name)."""
    return [
        str(folder)
        for folder in source_folders(tests)
        if not (tests / folder / "__init__.py").is_file()
    ]


def test_every_package_folder_has_a_test_folder() -> None:
    assert missing_test_folders(PACKAGE, TESTS) == []


def test_every_test_folder_mirrors_a_package_folder_or_module() -> None:
    assert unmirrored_test_folders(PACKAGE, TESTS) == []


def test_every_test_folder_is_a_package() -> None:
    assert folders_without_init(TESTS) == []


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    """A package with core/ and core/machines/, and tests mirroring only core/."""
    package, tests = tmp_path / "pkg", tmp_path / "tests"
    for folder in (package, package / "core", package / "core" / "machines"):
        folder.mkdir(parents=True)
        (folder / "__init__.py").touch()
    (package / "core" / "clock.py").touch()
    for folder in (tests, tests / "core", tests / "core" / "clock", tests / "e2e"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").touch()
    return package, tests


def test_the_checks_name_what_breaks_the_mirror(trees: tuple[Path, Path]) -> None:
    package, tests = trees
    assert missing_test_folders(package, tests) == ["core/machines"]
    assert unmirrored_test_folders(package, tests) == []  # core/clock mirrors a module
    (tests / "machines").mkdir()
    (tests / "machines" / "test_breaker.py").touch()
    assert unmirrored_test_folders(package, tests) == ["machines"]
    assert folders_without_init(tests) == ["machines"]
