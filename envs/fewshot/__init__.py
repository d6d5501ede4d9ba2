"""Few-shot supervised task sources: ``sample(n, *, split, seed, shots=None) -> EpisodeBatch``.

``make_source("sinusoid", shots=5)`` or ``make_source("omniglot", data_root=..., ways=..., shots=...)``: the
options are the fields of the source's config dataclass (:mod:`.sources`, which also holds what a run needs from
a source).

A data set's code lives with the data set: :mod:`.sinusoid`; :mod:`.omniglot` (reading the zips, splits, N-way K-shot
sampling), :mod:`.omniglot_runs` (the original one-shot runs of Lake et al. 2015: reading them, their baselines and
scoring a learner on them) and :mod:`.distortions` (random affine distortions of drawings).
"""

from __future__ import annotations

from typing import Any

from .sinusoid import Sinusoid
from .sources import SOURCE_CONFIGS, OmniglotConfig, SinusoidConfig, source_config_type

SOURCES = tuple(SOURCE_CONFIGS)


def make_source(name: str, **options: Any) -> Any:
    """Build a task source by name from its config fields; unknown names and bad options give a one-line
    ``ValueError``."""
    from metarl.core.config import config_from_dict

    if "root" in options:  # the source classes' own name for it
        options["data_root"] = options.pop("root")
    return config_from_dict(source_config_type(name), {"source": name, **options}).build()


__all__ = ["Sinusoid", "SOURCES", "make_source", "SinusoidConfig", "OmniglotConfig", "source_config_type"]
