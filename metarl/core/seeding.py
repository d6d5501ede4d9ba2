"""Explicit seeding: one seed makes every generator a run needs; nothing reads the global RNGs by accident.

``torch.nn`` initialisers draw from torch's global generator, so models are built inside :func:`seeded`, which
forks the global state, seeds it, and restores it afterwards: the caller's global state is untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generator seeded to ``seed``, restoring the previous state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def derive_seed(seed: int, *stream: int | str) -> int:
    """An independent 63-bit seed for a named sub-stream (e.g. ``derive_seed(seed, "eval", 3)``).

    Every element of ``stream`` counts in full: a string is hashed (BLAKE2b over its UTF-8 bytes, tagged as a string)
    and an integer is taken as it is (tagged as an integer), so ``"video"`` and ``"video-rollouts"``, or ``"1"`` and
    ``1``, give different seeds. The words go through numpy's ``SeedSequence``.
    """
    words = [int(seed) % 2**64]
    for part in stream:
        if isinstance(part, str):
            digest = hashlib.blake2b(part.encode(), digest_size=16).digest()
            words += [1, *(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4))]
        else:
            words += [2, int(part) % 2**64]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
