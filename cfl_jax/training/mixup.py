r"""Mixup on device: convex combinations of images and of their labels.

With :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)` drawn once per global batch and, as
partner, the batch reversed within each device's shard (timm's ``Mixup(mode='batch')``, which
mixes each device's own batch): a global batch of :math:`B` rows over :math:`S` devices holds
rows :math:`[sb, (s + 1) b)` on device :math:`s`, :math:`b = B / S`, and row :math:`i` is paired
with :math:`\pi(i) = b \lfloor i / b \rfloor + b - 1 - (i \bmod b)`:

.. math::
  \tilde x_i = \lambda x_i + (1 - \lambda) x_{\pi(i)}, \qquad
  \tilde q_i = \lambda e_{t_i} + (1 - \lambda) e_{t_{\pi(i)}}

so each label row is a probability vector; :math:`\lambda` is the same on every device (timm,
one process per device, draws one per device) and :math:`S = 1` reverses the whole batch. The
reshape to ``[S, b, ...]`` cuts along the shard boundaries, so the compiled step moves no image
between devices. timm also smooths the mixed targets; here smoothing stays with the loss
(``config.loss.label_smoothing``), which applies it to these probabilities.

References:
  Zhang et al., `mixup: Beyond Empirical Risk Minimization <https://arxiv.org/abs/1710.09412>`_,
  2018.
"""

import jax
import jax.numpy as jnp


def _reverse_shards(x: jax.Array, num_shards: int) -> jax.Array:
  """``x`` with each of ``num_shards`` equal consecutive slices of its leading axis reversed."""
  return jnp.flip(x.reshape(num_shards, -1, *x.shape[1:]), axis=1).reshape(x.shape)


def mixup(rng: jax.Array, images: jax.Array, labels: jax.Array, *, alpha: float,
          num_classes: int, num_shards: int = 1) -> tuple[jax.Array, jax.Array]:
  """Mixes a batch with its reverse within each shard.

  Args:
    rng: key of this batch's mixing weight.
    images: ``[B, ...]`` float images.
    labels: ``[B]`` integer labels in ``[0, num_classes)``.
    alpha: Beta concentration, > 0 (timm's ImageNet recipe: 0.2).
    num_classes: length of the label vectors.
    num_shards: ``S``, the devices the batch is split over along its leading axis (the data
      mesh's size); ``B`` must be a multiple of it.

  Returns:
    ``(images [B, ...] in images.dtype, probabilities float32 [B, num_classes])``.

  Raises:
    ValueError: if ``B`` is not a multiple of ``num_shards``.

  Examples:
    >>> x, q = mixup(jax.random.key(0), jnp.ones((4, 2, 2, 3)), jnp.arange(4), alpha=0.2,
    ...              num_classes=4, num_shards=2)
    >>> x.shape, q.shape, bool(jnp.allclose(q.sum(-1), 1.0))
    ((4, 2, 2, 3), (4, 4), True)
    >>> (q > 0).astype(int).tolist()   # rows 0 and 1 are partners, and so are rows 2 and 3
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
  """
  if num_shards < 1 or labels.shape[0] % num_shards:
    raise ValueError(f"The batch of {labels.shape[0]} rows does not split into num_shards="
                     f"{num_shards} equal shards.")
  weight = jax.random.beta(rng, alpha, alpha)

  def mix(x):
    return weight * x + (1 - weight) * _reverse_shards(x, num_shards)

  mixed = mix(images).astype(images.dtype)
  return mixed, mix(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32))
