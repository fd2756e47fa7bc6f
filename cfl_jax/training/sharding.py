"""Data parallelism with ``jax.jit`` and ``NamedSharding`` over a one-axis ``('data',)`` mesh.

The batch is split over all devices of all processes along its leading axis; the train state is
replicated. Each process holds only its own rows of a global batch (host-local numpy arrays from
``cfl_jax.data``), and :func:`shard_batch` stitches them into one global ``jax.Array`` with
``jax.make_array_from_process_local_data``. The same code runs on one CPU, one GPU, or many
hosts after ``jax.distributed.initialize()``.
"""

from collections.abc import Mapping, Sequence
import os

import jax
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


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Global arrays, batch-sharded over ``mesh``, from this process's host-local batch rows."""
  sharding = batch_sharded(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in batch.items()}
