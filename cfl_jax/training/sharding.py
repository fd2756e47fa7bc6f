"""Data parallelism with ``jax.jit`` and ``NamedSharding`` over a one-axis ``('data',)`` mesh.

The batch is split over all devices of all processes along its leading axis; the train state is
replicated. Each process holds only its own rows of a global batch (host-local numpy arrays from
``cfl_jax.data``), and :func:`shard_batch` stitches them into one global ``jax.Array`` with
``jax.make_array_from_process_local_data``. The same code runs on one CPU, one GPU, or many
hosts after ``jax.distributed.initialize()``.

Views (a dataset's ``aug_splits = n > 1``, timm's ``--aug-splits``): a process's rows come as
``[view 0 | view 1 | ...]`` of its images, and :func:`shard_batch` gives each device
``[view 0 | view 1 | ...]`` of its own images, the layout timm's collate gives each process (one
process per GPU). BatchNorm normalises over the global batch here whatever the layout; the
layout decides which rows mixup pairs (within a device's shard) and keeps every device's share
the same mix of clean and augmented views.
"""

from collections.abc import Mapping, Sequence
import functools
import os

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def use_cpu_devices(count: int) -> None:
  """Splits CPU work over ``count`` XLA host devices, unless the environment already chose.

  Call it before JAX initialises its backends. ``XLA_FLAGS`` with
  ``--xla_force_host_platform_device_count`` or ``JAX_NUM_CPU_DEVICES`` win over ``count``;
  GPU and TPU backends are unaffected.
  """
  if ("xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")
      and "JAX_NUM_CPU_DEVICES" not in os.environ):
    jax.config.update("jax_num_cpu_devices", count)


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ``('data',)`` mesh over ``devices`` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The sharding of the train state and of scalars: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The sharding of batches: the leading axis split over the ``'data'`` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(name: str, global_batch_size: int, mesh: jax.sharding.Mesh) -> None:
  """Raises a ValueError unless ``global_batch_size`` splits evenly over the mesh's devices."""
  devices = mesh.devices.size
  if global_batch_size % devices:
    raise ValueError(
        f"{name}={global_batch_size} must be divisible by the {devices} devices of the data mesh "
        f"({jax.process_count()} process(es) x {jax.local_device_count()} local devices); on CPU "
        "set the device count with experiments.train's --cpu_devices (or XLA_FLAGS="
        "--xla_force_host_platform_device_count=N), or change the batch size.")


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh, *,
                views: int = 1) -> dict[str, jax.Array]:
  """Global arrays, batch-sharded over ``mesh``, from this process's host-local batch rows.

  Args:
    batch: host-local arrays with a leading row axis; with ``views = n`` the rows are
      ``[view 0 | ... | view n-1]`` of the same images (see :mod:`cfl_jax.data.base`).
    mesh: the data mesh.
    views: ``n``, the dataset's ``aug_splits``.

  Returns:
    ``{key: jax.Array}`` sharded along the rows; with ``n > 1`` device ``d`` holds
    ``[view 0 | ... | view n-1]`` of the ``d``-th equal share of the images (module docstring).
  """
  sharding = batch_sharded(mesh)
  if views == 1 or len(mesh.local_devices) == 1:  # the process's rows are its device's already
    return {key: jax.make_array_from_process_local_data(sharding, value)
            for key, value in batch.items()}
  # [views, images] with the images split over the devices, then views within each device.
  by_view = NamedSharding(mesh, P(None, DATA_AXIS))
  arrays = {key: jax.make_array_from_process_local_data(
      by_view, value.reshape(views, -1, *value.shape[1:])) for key, value in batch.items()}
  return _views_within_devices(mesh)(arrays)


@functools.lru_cache
def _views_within_devices(mesh: jax.sharding.Mesh):
  """Jitted ``[views, D * b, ...] -> [D * views * b, ...]``, device ``d``'s rows its views of
  images ``[d * b, (d + 1) * b)``: a copy within each device, nothing moves between them."""
  devices = mesh.devices.size

  def regroup(x):
    x = x.reshape(x.shape[0], devices, -1, *x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[3:])

  return jax.jit(lambda arrays: jax.tree.map(regroup, arrays), out_shardings=batch_sharded(mesh))
