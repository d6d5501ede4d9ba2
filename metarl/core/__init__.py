"""The shared inner/outer-loop core: fast weights, adaptation, episode batches, seeding, RL returns."""

from .batch import EpisodeBatch

__all__ = ["EpisodeBatch"]
