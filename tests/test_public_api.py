"""The public surface: what `import ibkr_bridge` promises."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import ibkr_bridge
from ibkr_bridge import Bridge, ConfigError


def test_everything_in_all_is_importable() -> None:
    for name in ibkr_bridge.__all__:
        assert getattr(ibkr_bridge, name) is not None, name


@pytest.mark.parametrize("mode", ["SOKET", "portal2", "", "REST"])
def test_an_unknown_mode_is_a_value_error_at_startup(mode: str) -> None:
    env = {"IB_API_MODE": mode} if mode else {"IB_API_MODE": " "}
    if not mode:
        # Blank means "not set": the default (SOCKET) applies, no error.
        assert Bridge.from_env(env).settings.api_mode.value == "SOCKET"
        return
    with pytest.raises(ValueError, match="IB_API_MODE") as info:
        Bridge.from_env(env)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize(("raw", "mode"), [(" socket ", "SOCKET"), ("Portal", "PORTAL")])
def test_mode_forgives_case_and_blanks(raw: str, mode: str) -> None:
    assert Bridge.from_env({"IB_API_MODE": raw}).settings.api_mode.value == mode


def test_client_id_zero_is_refused_before_anything_opens() -> None:
    with pytest.raises(ValueError, match="IB_CLIENT_ID"):
        Bridge.from_env({"IB_CLIENT_ID": "0"})


# The facade, pinned: a name added or removed here is an API change (CHANGELOG it).
PUBLIC = [
    "AccountSelectionError",
    "ApiEvent",
    "ApiMode",
    "BreakerState",
    "Bridge",
    "BridgeError",
    "BridgeStatus",
    "BufferFormatError",
    "BufferFullError",
    "BufferLockedError",
    "BufferPathError",
    "ConfigError",
    "ConnectionState",
    "GatewayError",
    "GreeksRow",
    "IllegalTransition",
    "JsonlBufferError",
    "LifecycleError",
    "NeedsLoginError",
    "PermanentStoreError",
    "RecordFormatError",
    "SchemaError",
    "Settings",
    "StoreError",
    "TickInfo",
    "TransientStoreError",
    "__version__",
    "ensure_bridge_schema",
    "load_settings",
]


def test_all_is_pinned() -> None:
    assert sorted(ibkr_bridge.__all__) == PUBLIC


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("DurableWriter", "ibkr_bridge.storage.sink"),
        ("Store", "ibkr_bridge.storage.store"),
        ("JsonlBuffer", "ibkr_bridge.storage.buffer"),
        ("FakeClock", "ibkr_bridge.testing"),
        ("Clock", "ibkr_bridge.core.clock"),
        ("SystemClock", "ibkr_bridge.core.clock"),
        ("Transition", "ibkr_bridge.core.machines"),
    ],
)
def test_internals_are_imported_from_their_modules_only(name: str, home: str) -> None:
    assert name not in dir(ibkr_bridge)
    with pytest.raises(AttributeError, match=name):
        getattr(ibkr_bridge, name)
    assert getattr(importlib.import_module(home), name) is not None


def test_each_lazy_name_is_the_object_of_its_module() -> None:
    from ibkr_bridge.service.bridge import Bridge as Defined

    assert ibkr_bridge.Bridge is Defined
    assert set(dir(ibkr_bridge)) >= set(ibkr_bridge.__all__)


def test_the_version_comes_from_the_package_metadata(tmp_path: Path) -> None:
    from ibkr_bridge.core import _version

    assert ibkr_bridge.__version__ == metadata.version("ibkr-bridge")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "ibkr-bridge"\nversion = "9.8.7"\n')
    assert _version._source_tree_version(pyproject) == "9.8.7"
    assert _version._source_tree_version(tmp_path / "absent.toml") == _version.UNKNOWN


# Pure modules, and what none of them may pull in (the IO libraries of the upper layers).
PURE = ["ibkr_bridge", "ibkr_bridge.core.greeks", "ibkr_bridge.core.machines", "ibkr_bridge.config"]
HEAVY = ["aiohttp", "asyncpg", "prometheus_client", "ib_async"]


@pytest.mark.parametrize("module", PURE)
def test_importing_a_pure_module_imports_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
        "import ibkr_bridge\n"
        "ibkr_bridge.Bridge\n"  # the facade still loads on use
        "print('aiohttp' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["", "True"]
