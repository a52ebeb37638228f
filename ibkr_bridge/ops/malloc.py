"""Keep glibc's heap from creeping in a bridge that runs for months: a fixed mmap threshold.

glibc's malloc serves blocks of 128 KiB and more with their own ``mmap`` and returns them to
the system on ``free``, but by default it *raises* that threshold to the size of any such
block freed (up to 32 MiB). The SOCKET feed makes blocks of that size many times a second:
asyncio reads the socket into 256 KiB buffers, and ib_async (2.1.0, pinned) keeps what it
has not parsed as ``self._data = self._data[msgEnd:]``, one new bytes object per message
of a read. Once the threshold has been raised, all of those come from the heap, whose
free space then fragments and grows without bound while the memory in use stays flat
(docs/performance.md, "RSS over an accelerated hour": +80 MB in 10 minutes at 1,000 legs,
malloc's in-use bytes flat, its free bytes rising). Setting the threshold once, as
``MALLOC_MMAP_THRESHOLD_=131072`` would, turns the dynamic adjustment off and keeps those
blocks out of the heap.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Final

log = logging.getLogger(__name__)

#: glibc's ``M_MMAP_THRESHOLD`` (malloc.h) and its default starting value, 128 KiB.
M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 128 * 1024
#: The operator's own setting, read by glibc at startup; never overridden.
ENV_VAR: Final = "MALLOC_MMAP_THRESHOLD_"


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> str:
    """Fix glibc's mmap threshold at ``threshold`` bytes; say what was done.

    Returns ``"pinned"``, ``"env"`` (the operator set ``MALLOC_MMAP_THRESHOLD_``: left as
    it is) or ``"unsupported"`` (not glibc, or ``mallopt`` refused).
    """
    if os.environ.get(ENV_VAR):
        return "env"
    if not _is_glibc():
        return "unsupported"
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "unsupported"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:  # mallopt returns 1 on success
        return "unsupported"
    log.debug("glibc mmap threshold fixed at %d bytes", threshold)
    return "pinned"


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # no such name here: not glibc
        return False
