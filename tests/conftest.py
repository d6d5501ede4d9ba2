"""Shared fixtures: where the real Omniglot data lives (../shared/data/omniglot), skipping with a reason if absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"


def omniglot_root() -> Path | None:
    candidates = [os.environ.get("METARL_DATA"), SHARED_OMNIGLOT]
    for candidate in candidates:
        if candidate and (Path(candidate) / "images_background_small1.zip").is_file():
            return Path(candidate)
        if candidate and (Path(candidate) / "omniglot" / "images_background_small1.zip").is_file():
            return Path(candidate) / "omniglot"
    return None


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    root = omniglot_root()
    if root is None:
        pytest.skip("real Omniglot data not found: expected ../shared/data/omniglot or $METARL_DATA with the zips")
    return root


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread (small networks are far slower with two on these 2-core machines)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

