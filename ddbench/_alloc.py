"""The memory allocator of the ``ddbench`` command.

Tiny-batch training allocates and frees the same large buffers thousands of times. With
glibc's defaults each large buffer is an ``mmap``/``munmap`` pair, so every step pays page
faults (about a third of CPU time in the original DC evaluation loop). :func:`configure` turns
glibc's mmap off for the heap and raises its trim threshold, which keeps freed memory in the
heap for reuse; where Debian's tcmalloc is installed the CLI instead restarts itself with it
preloaded (``ddbench.cli``). Only the CLI calls :func:`configure`: importing ``ddbench``
leaves the process's allocator as it is (a script that wants the same settings calls it).
``DDBENCH_ALLOCATOR=system`` turns both off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
_KEEP = 1 << 30  # keep up to 1 GiB of freed heap for reuse instead of returning it
TCMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
)

state = {"mallopt": False}


def configure() -> None:
    """Set glibc's mmap/trim thresholds once for this process (a no-op off glibc, with
    ``DDBENCH_ALLOCATOR=system`` or under a preloaded allocator)."""
    if state["mallopt"] or os.environ.get("DDBENCH_ALLOCATOR") == "system":
        return
    if not sys.platform.startswith("linux") or preloaded_allocator():
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # glibc caps the mmap threshold at 32 MiB, and activations are larger: so no mmap at
        # all (M_MMAP_MAX=0), and freed heap kept for reuse (trim threshold, top pad).
        ok = all(
            libc.mallopt(k, v)
            for k, v in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _KEEP), (M_TOP_PAD, 64 << 20))
        )
        state["mallopt"] = bool(ok)
    except (OSError, AttributeError):
        pass


def preloaded_allocator() -> str | None:
    """The name of an LD_PRELOADed allocator, if any."""
    pre = os.environ.get("LD_PRELOAD", "")
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if name in pre:
            return name
    return None


def tcmalloc_path() -> str | None:
    return next((p for p in TCMALLOC_PATHS if os.path.exists(p)), None)


def describe() -> str:
    """What allocator this process uses, for result files and benchmarks."""
    return preloaded_allocator() or ("glibc+mallopt" if state["mallopt"] else "glibc")
