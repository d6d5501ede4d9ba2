"""metarl.core.host_memory: with the setting on, a freed 64 MB buffer is reused without new page faults."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metarl.core import host_memory

# allocates and frees a 64 MB tensor (above glibc's largest mmap threshold) twelve times; prints whether the setting
# was applied and the minor page faults of the last three allocations (the heap may take several rounds to offer a
# free block of the right size and 2 MB alignment, as in a training loop's first iterations: with five rounds the
# last three still faulted in some runs)
PROBE = """
import resource, sys, torch
from metarl.core.host_memory import keep_freed_memory
applied = keep_freed_memory()
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(applied), sum(faults[2:]))
"""


def _probe(**env: str) -> tuple[bool, int]:
    # a clean environment: only what finding Python needs, so nothing an earlier test left in os.environ counts
    clean = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                          env=dict(clean, THP_MEM_ALLOC_ENABLE="1", **env))
    applied, faults = done.stdout.split()
    return applied == "1", int(faults)


def _best_of(tries: int, **env: str) -> tuple[bool, int]:
    """The fewest faults over ``tries`` fresh processes (each places its heap at another random address, which
    decides how soon a freed block of the 2 MB alignment torch asks for fits again)."""
    results = [_probe(**env) for _ in range(tries)]
    return all(applied for applied, _ in results), min(faults for _, faults in results)


def _huge_pages_possible() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(host_memory._glibc() is None or not _huge_pages_possible(),
                    reason="mallopt is glibc's; the probe runs with metarl's default of transparent huge pages")
def test_freed_memory_is_reused_without_page_faults():
    applied, faults = _best_of(3, METARL_KEEP_FREED_MEMORY="1")
    assert applied
    assert faults < 30  # nothing left to fault in: the blocks are the heap's own
    applied, faults = _probe(METARL_KEEP_FREED_MEMORY="0")
    assert not applied
    assert faults > 3 * 32  # the switch is off: every fresh mmap is faulted in again (≥ 32 huge pages each)


def test_switch_off_and_idempotent(monkeypatch):
    monkeypatch.setattr(host_memory, "_applied", False)
    monkeypatch.setenv(host_memory.ENV_SWITCH, "0")
    assert host_memory.keep_freed_memory() is False
    monkeypatch.setattr(host_memory, "_applied", True)
    assert host_memory.keep_freed_memory() is True
