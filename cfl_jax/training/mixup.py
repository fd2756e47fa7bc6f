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
per-device count :math:`b` must be even: with :math:`b = 1` each row would be its own partner,
and with odd :math:`b` the middle row would be (:func:`check_rows_per_shard`). The
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


def check_rows_per_shard(batch_size: int, num_shards: int, name: str = "batch") -> None:
  """Raises a ValueError unless ``batch_size`` rows split into ``num_shards`` shards of an even
  count, so that every row has a partner other than itself; ``name`` names the batch size.

  Examples:
    >>> check_rows_per_shard(8, 4)
    >>> check_rows_per_shard(12, 4, name="batch_size")
    Traceback (most recent call last):
    ...
    ValueError: mixup needs an even number ...: batch_size=12 over 4 devices is 3 per device ...
  """
  if num_shards < 1 or batch_size % num_shards:
    raise ValueError(f"{name}={batch_size} does not split into num_shards={num_shards} equal "
                     "shards.")
  rows = batch_size // num_shards
  if rows % 2:
    why = ("each row would be mixed with itself" if rows == 1 else
           "the middle row of each device would not be mixed")
    raise ValueError(f"mixup needs an even number of rows per device to pair them: {name}="
                     f"{batch_size} over {num_shards} devices is {rows} per device ({why}).")


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
      mesh's size); ``B / S`` must be a whole, even number.

  Returns:
    ``(images [B, ...] in images.dtype, probabilities float32 [B, num_classes])``.

  Raises:
    ValueError: unless ``B / num_shards`` is a whole, even number (see
      :func:`check_rows_per_shard`).

  Examples:
    >>> x, q = mixup(jax.random.key(0), jnp.ones((4, 2, 2, 3)), jnp.arange(4), alpha=0.2,
    ...              num_classes=4, num_shards=2)
    >>> x.shape, q.shape, bool(jnp.allclose(q.sum(-1), 1.0))
    ((4, 2, 2, 3), (4, 4), True)
    >>> (q > 0).astype(int).tolist()   # rows 0 and 1 are partners, and so are rows 2 and 3
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
  """
  check_rows_per_shard(labels.shape[0], num_shards)
  weight = jax.random.beta(rng, alpha, alpha)

  def mix(x):
    return weight * x + (1 - weight) * _reverse_shards(x, num_shards)

  mixed = mix(images).astype(images.dtype)
  return mixed, mix(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32))
