"""Sinusoid regression, exactly as in the MAML paper (Finn, Abbeel & Levine 2017, section 5.1).

Task law: ``y = A sin(x - φ)`` with amplitude ``A ~ U[0.1, 5]``, phase ``φ ~ U[0, π]``; inputs ``x ~ U[-5, 5]``.
Each task gives ``shots`` support points and ``query_shots`` query points, drawn independently.

Splits (disjoint by construction): the (amplitude, phase) box is cut into a checkerboard of ``cells x cells``
cells; ``train`` tasks come from the white cells, ``test`` from the black ones (both span the full ranges).
``ood``: amplitudes in (5, 7], phases in [0, π] — outside the training range. ``split="any"`` samples the whole box
(the paper's protocol, where test tasks are fresh draws from the same law).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from metarl.core.batch import EpisodeBatch

from ..base import check_split, checkerboard_uniform, make_rng


class Sinusoid:
    """Few-shot task source: ``sample(n, split=..., seed=...) -> EpisodeBatch`` with x, y shaped ``[n, shots, 1]``."""

    kind = "regression"
    input_shape = (1,)
    output_dim = 1
    splits = ("train", "test", "ood", "any")

    def __init__(
        self,
        shots: int = 10,
        query_shots: int = 10,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        cells: int = 8,
    ) -> None:
        if shots < 1 or query_shots < 1:
            raise ValueError(f"shots and query_shots must be >= 1, got shots={shots}, query_shots={query_shots}")
        if not (amplitude[0] < amplitude[1] and phase[0] < phase[1] and x_range[0] < x_range[1]):
            raise ValueError("amplitude, phase and x_range must each be (low, high) with low < high")
        self.shots, self.query_shots = int(shots), int(query_shots)
        self.amplitude, self.phase, self.x_range, self.cells = amplitude, phase, x_range, cells

    def sample_task_parameters(self, n: int, split: str, rng: np.random.Generator) -> np.ndarray:
        """``[n, 2]`` rows of (amplitude, phase) from ``split``."""
        check_split(split, self.splits)
        low, high = [self.amplitude[0], self.phase[0]], [self.amplitude[1], self.phase[1]]
        if split == "any":
            return rng.uniform(low, high, size=(n, 2))
        if split == "ood":
            amp = rng.uniform(self.amplitude[1], self.amplitude[1] + 2.0, size=n)
            return np.stack([amp, rng.uniform(self.phase[0], self.phase[1], size=n)], axis=1)
        return checkerboard_uniform(rng, low, high, n, split, cells=self.cells)

    def sample(
        self,
        n: int,
        *,
        split: str = "train",
        seed: int | None = None,
        rng: np.random.Generator | None = None,
        shots: int | None = None,
    ) -> EpisodeBatch:
        """``n`` tasks; ``seed`` (or an explicit ``rng``) makes them reproducible; ``shots`` overrides the support."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        shots = self.shots if shots is None else int(shots)
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        rng = rng if rng is not None else make_rng(seed)
        params = self.sample_task_parameters(n, split, rng)
        x = rng.uniform(self.x_range[0], self.x_range[1], size=(n, shots + self.query_shots, 1))
        y = params[:, 0, None, None] * np.sin(x - params[:, 1, None, None])
        x_t, y_t = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        return EpisodeBatch(x_t[:, :shots], y_t[:, :shots], x_t[:, shots:], y_t[:, shots:])
