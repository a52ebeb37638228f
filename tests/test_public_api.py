"""The public surface: what `import ibkr_bridge` promises."""

from __future__ import annotations

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
