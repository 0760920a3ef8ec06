"""Process memory settings for serving: keep freed memory for reuse instead of returning it.

A capture keeps the activations it reads alive until the response is sent (zero-copy views of the
forward pass's own tensors), so a pass that captures every site holds hundreds of MB that a plain
pass would have recycled op by op. glibc's malloc hands blocks over a size threshold straight to
``mmap`` and gives them back to the kernel on ``free``; the next pass then pays a page fault and a
kernel zero-fill for every page it writes — measured on the GPT-2-small shape at 8 x 128 tokens,
that was most of the cost of capturing every site (about 0.3 s of system time per pass).
:func:`reuse_freed_memory` tells malloc to serve large blocks from its heap and to keep up to
``keep_bytes`` of freed memory there, so later passes reuse pages that are already mapped. Passes
run on the server's worker threads, and a thread's own arena (a heap of at most 64 MiB) cannot
hold a large block: glibc then maps it afresh on every pass whatever the settings (a 192 MiB
``[2048, 24576]`` SAE pre-activation faulted on every Encode). So threads share one arena
(``arenas=1``; small blocks still come from per-thread caches), and the memory a server holds on
to is about that of its largest pass. The server calls it
at start; benchmarks call it as the server does, so plain and hooked passes are measured under the
same allocator. Other allocators (jemalloc, tcmalloc, non-glibc platforms) are left alone.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_INT_MAX = 2**31 - 1
_configured: int | None = None


def reuse_freed_memory(keep_bytes: int = 2**30, arenas: int = 1) -> bool:
    """Have glibc malloc keep freed memory (up to ``keep_bytes`` at the top of a heap) for
    reuse, serve large blocks from its heaps rather than fresh ``mmap``s, and use at most
    ``arenas`` arenas. Returns whether the setting applies (False where malloc is not glibc's).
    Idempotent."""
    global _configured
    if _configured is not None:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    keep = max(0, min(int(keep_bytes), _INT_MAX))
    if not (
        mallopt(_M_ARENA_MAX, max(1, arenas))
        and mallopt(_M_TRIM_THRESHOLD, keep)
        and mallopt(_M_MMAP_MAX, 0)
    ):
        return False
    _configured = keep
    return True
