"""Few-shot supervised task sources: ``sample(n, *, split, seed, shots=None) -> EpisodeBatch``.

``make_source("sinusoid", ...)`` or ``make_source("omniglot", root=..., ways=..., shots=...)``.

A data set's code lives with the data set: :mod:`.sinusoid`; :mod:`.omniglot` (reading the zips, splits, N-way K-shot
sampling), :mod:`.omniglot_runs` (the original one-shot runs of Lake et al. 2015: reading them, their baselines and
scoring a learner on them) and :mod:`.distortions` (random affine distortions of drawings).
"""

from __future__ import annotations

from typing import Any

from .sinusoid import Sinusoid

SOURCES = ("sinusoid", "omniglot")


def make_source(name: str, **options: Any) -> Any:
    """Build a task source by name; unknown names and bad options give a one-line ``ValueError``."""
    if name == "sinusoid":
        allowed = {"shots", "query_shots"}
        return Sinusoid(**{k: v for k, v in options.items() if k in allowed and v is not None})
    if name == "omniglot":
        from .omniglot import OmniglotFewShot

        allowed = {"root", "ways", "shots", "query_shots", "seed", "augment", "split_fractions", "within_alphabet",
                   "image_size"}
        return OmniglotFewShot(**{k: v for k, v in options.items() if k in allowed and v is not None})
    raise ValueError(f"unknown task source {name!r}; choose one of: {', '.join(SOURCES)}")


__all__ = ["Sinusoid", "SOURCES", "make_source"]
