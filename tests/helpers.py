"""Small helpers shared by test files (fixtures live in conftest.py)."""

from __future__ import annotations


def weights_only_round_trip(state: dict) -> dict:
    """``state`` saved with ``torch.save`` and read back with ``weights_only=True`` (what checkpoints go through)."""
    import io

    import torch

    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    return torch.load(blob, weights_only=True)
