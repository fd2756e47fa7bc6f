r"""The cyclical mixing weight :math:`\xi` and schedules that follow it, as ``optax.Schedule``.

Each factory returns a pure function ``step -> float32 value`` built from ``jnp``
ops only, so it can be evaluated on a traced ``state.step`` inside ``jax.jit``,
joined with :func:`optax.join_schedules` or passed to
:func:`optax.inject_hyperparams`.

Paper form (``e`` the step or epoch counted from 0, ``E`` the schedule length,
``f`` the cyclical factor):

.. math::
  \xi(e) = \begin{cases}
    1 - f e / E & f e \le E \\
    (f e / E - 1) / (f - 1) & \text{otherwise}
  \end{cases}

:math:`\xi` falls from 1 to 0 over the first :math:`E / f` of training and climbs
back to 1 at :math:`e = E` ("easy, hard, easy"); ``f = 1`` is a monotone fall.

References:
  Smith, `Cyclical Focal Loss <https://arxiv.org/abs/2202.08978>`_, 2022.
  Smith, `General Cyclical Training of Neural Networks
  <https://arxiv.org/abs/2202.08835>`_, 2022.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import optax

__all__ = ["xi_schedule", "reference_xi_schedule", "cyclical_schedule", "follow_xi"]


def _positive_int(name: str, value, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer, got {value!r}.")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}.")
  return int(value)


def _factor(value) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"cyclical_factor must be a number, got {value!r}.")
  if not 1.0 <= float(value) < float("inf"):
    raise ValueError(f"cyclical_factor must be >= 1 and finite, got {value}.")
  return float(value)


def xi_schedule(total_steps: int, *, cyclical_factor: float = 4.0,
                steps_per_epoch: int | None = None) -> optax.Schedule:
  r"""The paper's :math:`\xi` schedule, always within [0, 1].

  By default ``e = step`` and ``E = total_steps`` (step-granular). With
  ``steps_per_epoch``, ``e = step // steps_per_epoch`` and
  ``E = total_steps // steps_per_epoch`` count whole epochs, so :math:`\xi` is
  constant within an epoch. After ``total_steps`` the final value (1, or 0 for
  ``f = 1``) is held.

  Args:
    total_steps: length of training in optimizer steps, ``>= 1``.
    cyclical_factor: :math:`f \ge 1`; the minimum :math:`\xi = 0` falls at
      ``total_steps / f`` (``f = 4``: a quarter of the way, the author's default).
    steps_per_epoch: optional; makes the schedule epoch-granular. Must divide
      ``total_steps``.

  Returns:
    An ``optax.Schedule`` mapping a step to a float32 :math:`\xi`.

  Examples:
    >>> import cfl_jax
    >>> xi = cfl_jax.xi_schedule(100, cyclical_factor=4.0)
    >>> [round(float(xi(s)), 4) for s in (0, 10, 25, 50, 100, 200)]
    [1.0, 0.6, 0.0, 0.3333, 1.0, 1.0]
  """
  total_steps = _positive_int("total_steps", total_steps)
  factor = _factor(cyclical_factor)
  length, step_to_unit = total_steps, lambda step: step
  if steps_per_epoch is not None:
    steps_per_epoch = _positive_int("steps_per_epoch", steps_per_epoch)
    if total_steps % steps_per_epoch:
      raise ValueError(
          f"total_steps ({total_steps}) must be a multiple of steps_per_epoch "
          f"({steps_per_epoch}) for an epoch-granular schedule.")
    length = total_steps // steps_per_epoch
    step_to_unit = lambda step: step // steps_per_epoch

  def schedule(step):
    unit = jnp.clip(step_to_unit(jnp.asarray(step)), 0, length)
    ratio = factor * unit.astype(jnp.float32) / length
    if factor == 1.0:
      xi = 1.0 - ratio
    else:
      xi = jnp.where(ratio <= 1.0, 1.0 - ratio, (ratio - 1.0) / (factor - 1.0))
    return jnp.clip(xi, 0.0, 1.0)

  return schedule


def reference_xi_schedule(num_epochs: int, steps_per_epoch: int, *,
                          cyclical_factor: float = 2.0,
                          first_epoch: int = 0) -> optax.Schedule:
  r"""The authors' reference-code :math:`\xi`, epoch-granular, for exact parity.

  With ``e = first_epoch + step // steps_per_epoch`` and ``E = num_epochs``:

  .. math::
    \xi(e) = \begin{cases}
      1 - f e / (E - 1) & f e < E \\
      0 & f = 1 \\
      (f e / (E - 1) - 1) / (f - 1) & \text{otherwise}
    \end{cases}

  ``first_epoch=0`` with ``E`` = epochs + cool-down epochs reproduces the timm
  (CIFAR/ImageNet) path; ``first_epoch=1`` reproduces the long-tail (OLTR) path,
  whose :math:`\xi` overshoots 1 at the last epoch (E=30, f=2: 1.069). This is the
  only schedule here that can leave [0, 1], and only because it is asked for.
  The last epoch's value is held after ``num_epochs`` epochs.

  Args:
    num_epochs: ``E``, ``>= 2``.
    steps_per_epoch: optimizer steps per epoch, ``>= 1``.
    cyclical_factor: :math:`f \ge 1` (the reference long-tail runs used 2).
    first_epoch: number of the first epoch, 0 or 1.

  Returns:
    An ``optax.Schedule`` mapping a step to a float32 :math:`\xi`.

  Examples:
    >>> import cfl_jax
    >>> xi = cfl_jax.reference_xi_schedule(201, 1, cyclical_factor=4.0)
    >>> [round(float(xi(e)), 4) for e in (0, 25, 50, 51, 100, 200)]
    [1.0, 0.5, 0.0, 0.0067, 0.3333, 1.0]
  """
  num_epochs = _positive_int("num_epochs", num_epochs, minimum=2)
  steps_per_epoch = _positive_int("steps_per_epoch", steps_per_epoch)
  factor = _factor(cyclical_factor)
  if first_epoch not in (0, 1):
    raise ValueError(f"first_epoch must be 0 or 1, got {first_epoch!r}.")
  last_epoch = first_epoch + num_epochs - 1

  def schedule(step):
    epoch = first_epoch + jnp.maximum(jnp.asarray(step), 0) // steps_per_epoch
    epoch = jnp.minimum(epoch, last_epoch).astype(jnp.float32)
    ratio = factor * epoch / (num_epochs - 1)
    falling = 1.0 - ratio
    rising = 0.0 if factor == 1.0 else (ratio - 1.0) / (factor - 1.0)
    return jnp.where(factor * epoch < num_epochs, falling, rising).astype(jnp.float32)

  return schedule


def follow_xi(xi: optax.Schedule, min_value: float, max_value: float) -> optax.Schedule:
  r"""A hyper-parameter that follows a given :math:`\xi` schedule.

  :math:`h = (1 - \xi) h_{max} + \xi h_{min}` with :math:`\xi` clipped to [0, 1],
  so the reference schedule's overshoot never pushes ``h`` past ``min_value``.

  Args:
    xi: any :math:`\xi` schedule (:func:`xi_schedule`, :func:`reference_xi_schedule`).
    min_value: value where :math:`\xi = 1` (start and end, "easy").
    max_value: value where :math:`\xi = 0` (the hard middle).

  Returns:
    An ``optax.Schedule``.

  Examples:
    >>> import cfl_jax
    >>> xi = cfl_jax.reference_xi_schedule(30, 1, cyclical_factor=2.0, first_epoch=1)
    >>> temperature = cfl_jax.follow_xi(xi, 0.5, 2.0)
    >>> round(float(xi(29)), 4), float(temperature(29))
    (1.069, 0.5)
  """
  for name, value in (("min_value", min_value), ("max_value", max_value)):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
        float("-inf") < value < float("inf")):
      raise ValueError(f"{name} must be a finite number, got {value!r}.")

  def schedule(step):
    weight = jnp.clip(xi(step), 0.0, 1.0)
    return (1.0 - weight) * max_value + weight * min_value

  return schedule


def cyclical_schedule(min_value: float, max_value: float, total_steps: int, *,
                      cyclical_factor: float = 4.0,
                      steps_per_epoch: int | None = None) -> optax.Schedule:
  r"""A hyper-parameter that follows :math:`\xi`: :math:`h = (1 - \xi) h_{max} + \xi h_{min}`.

  General cyclical training: ``min_value`` at the start and end ("easy"),
  ``max_value`` at the hard middle, e.g. cyclical weight decay, softmax
  temperature or gradient-clipping threshold, all sharing one factor.

  Args:
    min_value: value where :math:`\xi = 1`.
    max_value: value where :math:`\xi = 0`.
    total_steps: as in :func:`xi_schedule`.
    cyclical_factor: as in :func:`xi_schedule`.
    steps_per_epoch: as in :func:`xi_schedule`.

  Returns:
    An ``optax.Schedule``.

  Examples:
    >>> import optax, cfl_jax
    >>> wd = cfl_jax.cyclical_schedule(1e-4, 5e-4, 100, cyclical_factor=2.0)
    >>> [round(float(wd(s)), 6) for s in (0, 50, 100)]
    [0.0001, 0.0005, 0.0001]
    >>> opt = optax.inject_hyperparams(optax.sgd)(learning_rate=wd)
  """
  xi = xi_schedule(total_steps, cyclical_factor=cyclical_factor,
                   steps_per_epoch=steps_per_epoch)
  return follow_xi(xi, min_value, max_value)
