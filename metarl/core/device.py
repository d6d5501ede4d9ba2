"""Device selection shared by every learner and agent."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA where there is one, else CPU; an explicit CUDA device without CUDA is a one-line ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available (use device 'cpu' or 'auto')")
    return torch.device(name)
