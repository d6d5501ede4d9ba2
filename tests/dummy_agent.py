"""A minimal meta-RL agent for testing the run loop: it 'learns' a scalar that moves towards the task goals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metarl.core.seeding import derive_seed


@dataclass
class DummyConfig:
    seed: int = 0
    device: str = "cpu"
    step_size: float = 0.1
    """how far the scalar moves per iteration"""

    def __post_init__(self) -> None:
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")


class DummyAgent:
    name = "dummy"

    def __init__(self, env_id: str, config: DummyConfig) -> None:
        self.config = config
        self.value = torch.zeros(1)
        self.generator = torch.Generator().manual_seed(config.seed)

    def train_iteration(self, iteration: int) -> dict[str, float]:
        noise = float(torch.rand(1, generator=self.generator)) + derive_seed(self.config.seed, iteration) % 7
        self.value += self.config.step_size * noise
        return {"charts/mean_return": float(self.value), "env_steps": 10}

    def meta_test(self, tasks, num_episodes: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        base = float(self.value) + rng.normal(size=(len(tasks), 1))
        return base + np.arange(num_episodes)[None, :]

    def state_dict(self) -> dict:
        return {"value": self.value.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"].clone()
        self.generator.set_state(state["generator"])

    def close(self) -> None:
        pass
