r"""Mixup on device: convex combinations of images and of their labels.

With :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)` drawn once per global batch and the batch
reversed as partner (timm's ``Mixup(mode='batch')``):

.. math::
  \tilde x_i = \lambda x_i + (1 - \lambda) x_{B-1-i}, \qquad
  \tilde q_i = \lambda e_{t_i} + (1 - \lambda) e_{t_{B-1-i}}

so each label row is a probability vector. timm also smooths the mixed targets; here smoothing
stays with the loss (``config.loss.label_smoothing``), which applies it to these probabilities.

References:
  Zhang et al., `mixup: Beyond Empirical Risk Minimization <https://arxiv.org/abs/1710.09412>`_,
  2018.
"""

import jax
import jax.numpy as jnp


def mixup(rng: jax.Array, images: jax.Array, labels: jax.Array, *, alpha: float,
          num_classes: int) -> tuple[jax.Array, jax.Array]:
  """Mixes a batch with its reverse.

  Args:
    rng: key of this batch's mixing weight.
    images: ``[B, ...]`` float images.
    labels: ``[B]`` integer labels in ``[0, num_classes)``.
    alpha: Beta concentration, > 0 (timm's ImageNet recipe: 0.2).
    num_classes: length of the label vectors.

  Returns:
    ``(images [B, ...] in images.dtype, probabilities float32 [B, num_classes])``.

  Examples:
    >>> x, q = mixup(jax.random.key(0), jnp.ones((4, 2, 2, 3)), jnp.arange(4), alpha=0.2,
    ...              num_classes=4)
    >>> x.shape, q.shape, bool(jnp.allclose(q.sum(-1), 1.0))
    ((4, 2, 2, 3), (4, 4), True)
  """
  weight = jax.random.beta(rng, alpha, alpha)
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  mixed = weight * images + (1 - weight) * jnp.flip(images, axis=0)
  return mixed.astype(images.dtype), weight * one_hot + (1 - weight) * jnp.flip(one_hot, axis=0)
