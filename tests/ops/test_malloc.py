"""The fixed glibc mmap threshold (ibkr_bridge.ops.malloc), shown on the allocator itself.

Each case runs in a fresh interpreter, so the allocator's dynamic threshold starts where
glibc starts it, whatever this test process allocated before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ibkr_bridge.ops.malloc import ENV_VAR, MMAP_THRESHOLD, pin_mmap_threshold

GLIBC = os.confstr("CS_GNU_LIBC_VERSION") is not None if hasattr(os, "confstr") else False

# Frees one mmapped 4 MiB block (glibc then raises its threshold to 4 MiB), optionally pins
# the threshold, allocates a 256 KiB block (asyncio's socket read size) and prints how much
# of it came from mmap rather than the heap.
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from ibkr_bridge.ops.malloc import pin_mmap_threshold

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    big = bytearray(4 * 1024 * 1024)
    del big
    outcome = pin_mmap_threshold() if sys.argv[1] == "pin" else "-"
    before = libc.mallinfo2().hblkhd
    block = bytearray(256 * 1024)
    print(outcome, libc.mallinfo2().hblkhd - before)
    """
)


def probe(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    outcome, mmapped = done.stdout.split()
    return outcome, int(mmapped)


needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")


@needs_glibc
def test_without_the_pin_a_large_block_after_a_larger_free_comes_from_the_heap() -> None:
    # The behaviour the pin exists for: the threshold followed the freed 4 MiB block up.
    assert probe("none") == ("-", 0)


@needs_glibc
def test_with_the_pin_the_large_block_is_mmapped_again() -> None:
    outcome, mmapped = probe("pin")
    assert outcome == "pinned"
    assert mmapped >= 256 * 1024


def test_an_operators_own_threshold_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(4 * MMAP_THRESHOLD))
    assert pin_mmap_threshold() == "env"


def test_the_run_command_pins_the_threshold_before_the_bridge_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ibkr_bridge.ops import _run_cmd

    calls: list[str] = []

    def pin() -> str:
        calls.append("pin")
        return "pinned"

    monkeypatch.setattr(_run_cmd, "pin_mmap_threshold", pin)

    async def serve(settings: object) -> int:
        calls.append("serve")
        return 0

    monkeypatch.setattr(_run_cmd, "serve", serve)
    monkeypatch.setattr(_run_cmd, "_settings", lambda args: _Settings())
    monkeypatch.setattr(_run_cmd, "configure_logging", lambda *a: None)
    assert _run_cmd.cmd_run(None) == 0  # type: ignore[arg-type]
    assert calls == ["pin", "serve"]


class _Settings:
    log_format = "text"
    log_level = "INFO"
    unknown_keys: tuple[str, ...] = ()
