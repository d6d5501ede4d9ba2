"""Device selection and torch thread settings shared by every learner and agent."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA where there is one, else CPU; an explicit CUDA device without CUDA is a one-line ValueError.

    ``name`` has passed :func:`metarl.core.config.check_device` (the config's ``__post_init__``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available (use device 'cpu' or 'auto')")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the caller's number (None: unchanged).

    The one place an agent changes torch's thread count: RL²'s ``torch_threads`` field and the rollouts of
    :func:`metarl.core.sampling.collect_episodes` (one thread while a physics worker needs the other core)."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
