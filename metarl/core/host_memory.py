"""Keep freed host memory in the process instead of handing it back to the kernel (glibc ``mallopt``).

Why: PyTorch's CPU allocator has no cache; it calls ``malloc``/``free`` for every tensor. glibc serves a request above
its mmap threshold (dynamic, at most 32 MB on 64-bit Linux) with a fresh ``mmap`` and unmaps it on ``free``, so
every activation of a meta-batch (MAML-TRPO's ``[40 tasks, 4000 steps, 100 units]`` float32 = 64 MB) arrives as new
pages the kernel must fault in and zero, in every inner and outer step (``tests/test_host_memory.py`` counts the
faults of such a buffer with and without this setting).

:func:`keep_freed_memory` sets ``M_MMAP_MAX = 0`` (every block comes from the heap), ``M_TRIM_THRESHOLD`` to the
largest value (the heap's top is never given back) and ``M_TOP_PAD`` (the heap grows in steps of ``top_pad_mb``):
after the first iteration a training loop reuses memory it already has. The price: the process keeps its peak heap
(``bench_maml_trpo.py`` reports ``max_rss_mb``), which is what a long training process wants and a library imported
into someone else's program may not, so metarl does **not** do this on import: ``metarl train``, ``metarl resume``,
``metarl evaluate``, ``make demo`` and the benchmarks call it; ``METARL_KEEP_FREED_MEMORY=0`` turns it off there.
``experiments/bench_maml_trpo.py --compare-heap R`` measures both settings in fresh processes.

Only glibc has ``mallopt``: elsewhere (macOS, musl) :func:`keep_freed_memory` changes nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_SWITCH = "METARL_KEEP_FREED_MEMORY"

# glibc's <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_applied = False


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only; musl lacks it
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory(top_pad_mb: int = 64) -> bool:
    """Make glibc serve every allocation from the heap and keep freed memory (see the module docstring).

    Returns True when the setting is in force (now or from an earlier call), False where it cannot apply (not
    glibc) or ``METARL_KEEP_FREED_MEMORY=0``. Idempotent; process-wide and not undone.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    ok &= libc.mallopt(_M_TOP_PAD, top_pad_mb << 20) == 1
    _applied = bool(ok)
    return _applied
