"""The oracle: PEARL's soft actor-critic conditioned on the true task instead of an inferred context.

Rakelly et al. 2019 (PEARL) compare against such an oracle policy: it sees the task parameters, so it needs no
exploration and no inference, and its return bounds what any context-based meta-learner can reach with the same
SAC. Here z is the environment's ``task_descriptor(task)`` (a fixed-length float vector, see
:mod:`metarl.envs.base`; e.g. the goal (x, y) of 2D navigation) everywhere PEARL uses a latent sample: in data
collection, in every gradient step (no encoder, no KL term) and at meta-test, whose columns are therefore flat
(nothing is adapted). Everything else — config, replay, update, checkpoints — is :class:`~metarl.agents.pearl.PEARL`'s.
An environment without ``task_descriptor`` is refused at construction with a one-line ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .pearl import PEARL, PEARLConfig


@dataclass
class OracleConfig(PEARLConfig):
    """Settings of the oracle: PEARL's (the encoder fields, latent_dim and kl_lambda are unused)."""


class Oracle(PEARL):
    """PEARL's SAC with z = the true task descriptor (the :class:`metarl.core.agent.MetaRLAgent` contract)."""

    name = "oracle"
    uses_encoder = False

    def _latent_dim(self) -> int:
        if not callable(getattr(self.task_api, "task_descriptor", None)):
            raise ValueError(f"the oracle needs task descriptors: {self.env_id} has no task_descriptor(task) "
                             "(see metarl.envs.base)")
        return int(np.asarray(self.task_api.task_descriptor(self.task_api.get_task())).reshape(-1).shape[0])

    def _descriptors(self, tasks: list[Any]) -> torch.Tensor:
        rows = [np.asarray(self.task_api.task_descriptor(task), dtype=np.float32).reshape(-1) for task in tasks]
        return torch.as_tensor(np.stack(rows), device=self.device)

    def _collection_latents(self, task_ids: torch.Tensor, posterior: bool, generator: torch.Generator) -> torch.Tensor:
        return self.train_descriptors[task_ids.to(self.device)].clone()
