"""Give freed memory back to the operating system (glibc).

glibc serves allocations below its mmap threshold from per-thread heaps ("arenas") and keeps
what is freed there; the threshold also rises, up to 32 MB, each time a large block is freed.
Decoding a 40 Mpx image in one worker thread after another then leaves each thread's arena
holding the image's memory: 20 uploads of 40 Mpx PNGs, decoded one at a time, left the server
~1.7 GB larger (docs/reliability.md, "Memory bound"). A fixed threshold of 1 MB (which also
stops it rising) puts every image buffer in its own mapping, unmapped when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1024 * 1024


def map_large_allocations(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve allocations of ``threshold`` bytes and more from their own mappings (glibc's
    ``mallopt(M_MMAP_THRESHOLD)``); False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
