"""A model host's in-flight count and last-use time, in a page shared between the host and the manager.

The page is mapped before the fork, so the host writes and the manager reads it without any message:
eviction (policy ``lru``) can ask "is this model busy, when was it last used?" for free.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import threading
import time

IN_FLIGHT = struct.Struct("q")
LAST_USED = struct.Struct("d")
LAST_USED_OFFSET = 8


class Activity:
    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous and MAP_SHARED: shared across fork
        self._lock = threading.Lock()
        self._in_flight: ctypes.c_int64 | None = None
        self._last_used: ctypes.c_double | None = None

    # Host side -------------------------------------------------------------------------------
    def attach(self) -> None:
        """Called once in the host after fork: writes go through aligned 8-byte stores."""
        self._in_flight = ctypes.c_int64.from_buffer(self._page, 0)
        self._last_used = ctypes.c_double.from_buffer(self._page, LAST_USED_OFFSET)

    def begin(self) -> None:
        assert self._in_flight is not None and self._last_used is not None
        with self._lock:
            self._in_flight.value += 1
            self._last_used.value = time.monotonic()

    def end(self) -> None:
        assert self._in_flight is not None and self._last_used is not None
        with self._lock:
            self._in_flight.value -= 1
            self._last_used.value = time.monotonic()

    # Manager side ----------------------------------------------------------------------------
    def in_flight(self) -> int:
        return IN_FLIGHT.unpack_from(self._page, 0)[0]

    def last_used(self) -> float:
        """``time.monotonic()`` of the last request start or end (0.0 if none yet)."""
        return LAST_USED.unpack_from(self._page, LAST_USED_OFFSET)[0]

    def close(self) -> None:
        self._page.close()
