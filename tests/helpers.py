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


def rollout(env, actions, seed: int):
    """Observations ``[steps + 1, ...]`` and rewards ``[steps]`` of ``actions`` from ``env.reset(seed=seed)``, up to
    the end of the episode."""
    import numpy as np

    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return np.array(observations), np.array(rewards)
