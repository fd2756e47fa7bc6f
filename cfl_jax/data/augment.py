"""Vectorised numpy augmentation for small in-memory images (CIFAR).

Implements the :class:`~cfl_jax.data.base.Augmentation` protocol: parameters are drawn for a whole
global batch, each process applies its rows.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RandomCropFlip:
  """Zero-pad by ``padding``, crop back to the original size at a random offset, flip with p=1/2.

  The standard CIFAR augmentation (He et al. 2016): ``images [B, H, W, C]`` in, same shape and
  dtype out.

  Examples:
    >>> augment = RandomCropFlip(padding=4)
    >>> images = np.zeros((2, 32, 32, 3), np.uint8)
    >>> params = augment.sample(np.random.default_rng(0), 2)
    >>> augment(images, params).shape
    (2, 32, 32, 3)
  """

  padding: int = 4

  def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    """``{'offset': int [B, 2] in [0, 2 * padding], 'flip': bool [B]}``."""
    return {"offset": rng.integers(0, 2 * self.padding + 1, size=(batch_size, 2)),
            "flip": rng.random(batch_size) < 0.5}

  def __call__(self, images: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    batch, height, width, _ = images.shape
    pad = self.padding
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = params["offset"][:, :1] + np.arange(height)                 # [B, H]
    cols = params["offset"][:, 1:] + np.arange(width)                  # [B, W]
    cols = np.where(params["flip"][:, None], cols[:, ::-1], cols)
    return padded[np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]
