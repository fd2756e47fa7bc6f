"""Tests of the Checkpointer: round trip, progress record, and refusal of incompatible states.

Whole-run behaviour (resume, preemption, corrupted workdirs) is in test_training_runs.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfl_jax.training import CheckpointError
from cfl_jax.training import checkpointing
from cfl_jax.training.checkpointing import Checkpointer, abstract_like


def test_round_trip_and_incompatible_state(tmp_path):
  checkpointer = Checkpointer(str(tmp_path), max_to_keep=1)
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(4)}
  checkpointer.save(4, state, {"config": {"a": 1}, "note": [1.5]})
  checkpointer.save(5, state, {"config": {"a": 1}, "note": [2.5]})
  checkpointer.close()

  checkpointer = Checkpointer(str(tmp_path), max_to_keep=1)
  assert checkpointer.latest_step() == 5  # max_to_keep=1 removed step 4
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restored, progress = checkpointer.restore(5, abstract_like(state, sharding), {"a": 1})
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert progress == {"config": {"a": 1}, "note": [2.5]}
  with pytest.raises(CheckpointError, match="different config; differing keys:\n  a: 1 -> 2"):
    checkpointer.restore(5, abstract_like(state, sharding), {"a": 2})
  wrong = abstract_like({"w": jnp.zeros((3, 3)), "step": jnp.int32(0)}, sharding)
  with pytest.raises(CheckpointError, match="does not hold a train state matching"):
    checkpointer.restore(5, wrong, {"a": 1})
  checkpointer.close()


_SPEC = "[tensorstore_spec='{\"driver\":\"file\",\"file_io_sync\":true}']"


@pytest.mark.parametrize("error", [
    # TensorStore's payloads come in either order (both seen in failed saves of a full disk).
    ValueError("OUT_OF_RANGE: Failed to write 253959 bytes to file 4: File too large "
               f"[os_error_code='27'] {_SPEC}"),
    ValueError(f"OUT_OF_RANGE: Failed to write 253959 bytes to file 4: File too large {_SPEC} "
               "[os_error_code='27']"),
    RuntimeError("Save failed"),
])
def test_a_failed_save_is_named_by_its_operating_system_error(error):
  if isinstance(error, RuntimeError):
    error.__cause__ = OSError(27, "File too large")
  assert checkpointing._root_cause(error) == "[Errno 27] File too large"
