"""The oracle: PEARL's soft actor-critic conditioned on the true task instead of an inferred context.

Rakelly et al. 2019 (PEARL) compare against such an oracle policy: it sees the task parameters, so it needs no
exploration and no inference, and its return bounds what any context-based meta-learner can reach with the same
SAC. Here z is the task's descriptor everywhere PEARL uses a latent sample: in data collection, in every gradient
step (no encoder, no KL term) and at meta-test, whose columns are therefore flat (nothing is adapted;
``episodes_per_stage`` is 1). Everything else — config, replay, update, checkpoints — is
:class:`~metarl.agents.pearl.PEARL`'s.

The descriptor is the environment's ``task_descriptor(task)`` where it has one (a fixed-length float vector, see
:mod:`metarl.envs.base`; e.g. the goal (x, y) of 2D navigation). Without it, a task made of numbers is its own
descriptor: a number, a dict (entries in sorted key order) or dataclass (fields in order) of numbers, or nested
tuples/lists of numbers, flattened (:func:`metarl.core.agent_env.task_numbers`; ``{"goal": 0.3}`` gives ``[0.3]``).
Any other task (a string, an object) without ``task_descriptor`` is refused at construction with a one-line
``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metarl.core.agent_env import task_numbers

from .pearl import PEARL, PEARLConfig


@dataclass
class OracleConfig(PEARLConfig):
    """Settings of the oracle: PEARL's (the encoder fields, latent_dim and kl_lambda are unused)."""


class Oracle(PEARL):
    """PEARL's SAC with z = the true task descriptor (the :class:`metarl.core.agent.MetaRLAgent` contract)."""

    name = "oracle"
    uses_encoder = False

    def _descriptor(self, task: Any) -> np.ndarray:
        """The task's ``task_descriptor`` from the env, else its flattened numbers (see the module docstring)."""
        describe = getattr(self.task_env, "task_descriptor", None)
        if callable(describe):
            return np.asarray(describe(task), dtype=np.float32).reshape(-1)
        numbers = task_numbers(task)
        if numbers is None:
            raise ValueError(f"the oracle needs task descriptors: {self.env_id} has no task_descriptor(task) and its "
                             f"tasks are not numbers (a dict or dataclass of numbers), e.g. {task!r}")
        return numbers

    def _latent_dim(self) -> int:
        return int(self._descriptor(self.task_env.get_task()).shape[0])

    def _descriptors(self, tasks: list[Any]) -> torch.Tensor:
        rows = [self._descriptor(task) for task in tasks]
        if any(row.shape != (self.latent_dim,) for row in rows):
            raise ValueError(f"the oracle needs task descriptors of one length ({self.latent_dim}); {self.env_id} "
                             f"gave {sorted({row.shape[0] for row in rows})}")
        return torch.as_tensor(np.stack(rows), device=self.device)

    def _collection_latents(self, task_ids: torch.Tensor, posterior: bool, generator: torch.Generator) -> torch.Tensor:
        return self.train_descriptors[task_ids.to(self.device)].clone()
