"""Explicit seeding: one seed makes every generator a run needs; nothing reads the global RNGs by accident.

``torch.nn`` initialisers draw from torch's global generator, so models are built inside :func:`seeded`, which
forks the global state, seeds it, and restores it afterwards: the caller's global state is untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generator seeded to ``seed``, restoring the previous state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def derive_seed(seed: int, *stream: int | str) -> int:
    """An independent 63-bit seed for a named sub-stream (e.g. ``derive_seed(seed, "eval", 3)``)."""
    words = [seed] + [int.from_bytes(s.encode(), "little") % (2**32) if isinstance(s, str) else int(s) for s in stream]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass
class Generators:
    """The generators a run uses, all from one seed: task sampling, torch sampling and numpy sampling."""

    seed: int
    torch: torch.Generator
    numpy: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int) -> Generators:
        return cls(
            seed=seed,
            torch=torch.Generator().manual_seed(derive_seed(seed, "torch")),
            numpy=np.random.default_rng(derive_seed(seed, "numpy")),
        )

    def state_dict(self) -> dict:
        return {"seed": self.seed, "torch": self.torch.get_state(), "numpy": self.numpy.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.torch.set_state(state["torch"])
        self.numpy.bit_generator.state = state["numpy"]
