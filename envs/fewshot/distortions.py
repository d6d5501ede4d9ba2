"""Image distortions for few-shot handwriting: new drawings of the same character, never a new class.

:func:`random_affine` distorts a batch of single-channel images ``[n, 1, S, S]`` (ink 1, background 0) with a
random rotation, isotropic scale, shear and translation per image, drawn from an explicit ``numpy`` generator.
:class:`~metarl.envs.fewshot.omniglot.OmniglotFewShot` applies it to training images (``augment=True``,
:data:`AUGMENT_RANGES`), and the one-shot runs protocol
(:func:`~metarl.envs.fewshot.omniglot_runs.one_shot_probabilities`) to make test-time copies of a run's drawings.
Affine distortions are the variation of handwriting the Omniglot literature augments with (Koch, Zemel &
Salakhutdinov 2015, *Siamese neural networks for one-shot image recognition*).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["AUGMENT_RANGES", "random_affine"]

#: ranges of the random affine augmentation (the defaults of :func:`random_affine`)
AUGMENT_RANGES = {"rotation_degrees": 10.0, "scale": (0.85, 1.15), "shear_degrees": 10.0, "translate": 0.08}


def random_affine(
    images: torch.Tensor,
    rng: np.random.Generator,
    rotation_degrees: float = 10.0,
    scale: tuple[float, float] = (0.85, 1.15),
    shear_degrees: float = 10.0,
    translate: float = 0.08,
) -> torch.Tensor:
    """A random affine distortion of each image ``[n, 1, S, S]`` (ink 1, background 0), drawn from ``rng``.

    Rotation U(±``rotation_degrees``), isotropic scale U(``scale``), shear U(±``shear_degrees``) and translation
    U(±``translate``) of the image width, per image, applied with bilinear ``grid_sample`` (zeros outside):
    the variation of handwriting the Omniglot literature augments with (e.g. Koch et al. 2015 used affine
    distortions for one-shot Omniglot). It makes a new drawing of the same character, never a new class.
    """
    n = images.shape[0]
    angle = np.deg2rad(rng.uniform(-rotation_degrees, rotation_degrees, n))
    shear = np.deg2rad(rng.uniform(-shear_degrees, shear_degrees, n))
    zoom = rng.uniform(scale[0], scale[1], n)
    shift = rng.uniform(-2 * translate, 2 * translate, (n, 2))  # grid coordinates span [-1, 1]
    cos, sin, tan = np.cos(angle), np.sin(angle), np.tan(shear)
    theta = np.zeros((n, 2, 3))
    # inverse map (output -> input coordinates): rotation @ shear / zoom
    theta[:, 0, 0] = cos / zoom
    theta[:, 0, 1] = (cos * tan - sin) / zoom
    theta[:, 1, 0] = sin / zoom
    theta[:, 1, 1] = (sin * tan + cos) / zoom
    theta[:, :, 2] = shift
    grid = torch.nn.functional.affine_grid(torch.from_numpy(theta).float(), list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
