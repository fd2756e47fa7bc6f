"""The run's storage clients (cfl_jax.store.clients) and what their errors mean
(cfl_jax.store.errors), seen with the real clients against the GCS emulator of ``gcs_bucket``.

The runner itself trains with only the emulator's variables set in
tests/test_training_bucket_faults.py.
"""

import json
import subprocess
import sys
import textwrap
import time
import uuid

import aiohttp
from etils import epath
from gcsfs.retry import HttpError
from google.auth import exceptions as auth_exceptions
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import requests
import tensorstore as ts

from cfl_jax import store
from cfl_jax.store import clients
from cfl_jax.training.checkpointing import Checkpointer
from training_helpers import user_environment

def test_a_process_with_only_the_users_variables_uses_the_runners_clients(gcs_bucket, tmp_path):
  """TensorFlow is installed here, and neither EPATH_USE_TF nor GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT
  is set: the runner's clients are gcsfs's core client (for epath and our store) and
  TensorStore, both reaching the emulator."""
  prefix = f"{gcs_bucket}/{uuid.uuid4().hex[:8]}"
  script = textwrap.dedent(f"""
      import json, os
      from etils import epath
      import gcsfs, tensorstore as ts
      from cfl_jax import store
      assert not {{"EPATH_USE_TF", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"}} & set(os.environ)
      store.use_runner_clients()
      path = epath.Path("{prefix}/note.txt")
      store.write_atomic(path, "written by epath")
      array = ts.open({{"driver": "zarr3", "kvstore": "{prefix}/array/"}}, create=True,
                      dtype=ts.int32, shape=[3]).result()
      array.write([1, 2, 3]).result()
      print(json.dumps({{
          "read": path.read_text(), "files": sorted(store.relative_files("{prefix}")),
          "array": array.read().result().tolist(),
          "client": type(store.filesystem(path)[0]).__mro__[1].__module__,
          "installed_default": gcsfs.GCSFileSystem.__module__}}))
  """)
  answer = subprocess.run([sys.executable, "-c", script], env=user_environment(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
  assert answer.returncode == 0, answer.stderr[-3000:]
  seen = json.loads(answer.stdout.strip().splitlines()[-1])
  assert seen["read"] == "written by epath" and seen["array"] == [1, 2, 3]
  assert seen["files"][-1] == "note.txt" and any(f.startswith("array/") for f in seen["files"])
  assert seen["client"] == "gcsfs.core"  # not the HNS client gcsfs installs by default:
  assert seen["installed_default"] == "gcsfs.extended_gcsfs"


# What errors mean, in the forms the real clients raise them.

def _tensorstore_error(faults, gcs_bucket: str, **plan) -> ValueError:
  """The error TensorStore raises reading an array under the fault ``plan`` (one retry)."""
  prefix = f"{gcs_bucket}/{uuid.uuid4().hex[:8]}"
  context = ts.Context({"gcs_request_retries": {"max_retries": 2, "initial_delay": "0.1s",
                                                "max_delay": "0.1s"}})
  array = ts.open({"driver": "zarr3", "kvstore": f"{prefix}/"}, create=True, dtype=ts.int32,
                  shape=[2], context=context).result()
  array.write([1, 2]).result()
  faults.set(match=f" {prefix.rsplit('/', 1)[1]}/", **plan)
  try:
    with pytest.raises(ValueError) as raised:
      ts.open({"driver": "zarr3", "kvstore": f"{prefix}/"}, context=context).result()
  finally:
    faults.clear()
  return raised.value


def test_store_errors_are_classified_by_what_they_mean(gcs_bucket, gcs_faults):
  refused = {"rate": 1.0, "after_effect": 0.0}
  tensorstore = {code: _tensorstore_error(gcs_faults, gcs_bucket, statuses=[code], **refused)
                 for code in (401, 403, 404, 429, 503)}
  tensorstore["dropped"] = _tensorstore_error(gcs_faults, gcs_bucket, outages=[[0, 60]])
  assert str(tensorstore[503]).startswith("ABORTED: ") and "All 2 retry attempts failed" in str(
      tensorstore[503])
  assert "CURL error" in str(tensorstore["dropped"])
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (slow: only here)
  causes = {
      "unavailable": [
          HttpError({"code": 503, "message": "Service Unavailable"}),
          HttpError({"code": 429, "message": "Too Many Requests"}),
          aiohttp.ServerDisconnectedError(), ConnectionResetError(),
          requests.ConnectionError("no route"), auth_exceptions.TransportError("no route"),
          auth_exceptions.RefreshError("expired"), tensorstore[503], tensorstore[429],
          tensorstore["dropped"], tf.errors.UnavailableError(None, None, "socket closed"),
          ValueError("ABORTED: All 2 retry attempts failed: Service Unavailable "
                     "[http_response_code='503']"),  # the form of the issue, with its status
      ],
      "timed out": [
          TimeoutError(), aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
          requests.ReadTimeout(), HttpError({"code": 408, "message": "Request Timeout"}),
          tf.errors.DeadlineExceededError(None, None, "deadline"),
          ValueError("DEADLINE_EXCEEDED: reading gs://b/x"),
          ValueError("ABORTED: All 3 retry attempts failed: CURL error Timeout was reached: "
                     "Operation too slow. [curl_code='28']"),
      ],
      "aborted": [tf.errors.AbortedError(None, None, "aborted"),
                  ValueError("ABORTED: All 3 retry attempts failed")],
      "unauthorised": [HttpError({"code": 401, "message": "Invalid Credentials"}),
                       tensorstore[401], tf.errors.UnauthenticatedError(None, None, "no")],
      "forbidden": [OSError("Forbidden: b/cfl-jax-test/o\nno access"), PermissionError("denied"),
                    tensorstore[403], tf.errors.PermissionDeniedError(None, None, "no")],
      "out of memory": [MemoryError(), tf.errors.ResourceExhaustedError(None, None, "OOM"),
                        jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while "
                                                   "trying to allocate 8.00GiB.")],
      None: [HttpError({"code": 412, "message": "Precondition Failed"}),
             HttpError({"code": 404, "message": "Not Found"}), FileNotFoundError("gone"),
             FileExistsError("gs://b/.lock"), tensorstore[404],
             json.JSONDecodeError("Expecting value", '{"config": ', 11),
             ValueError("DATA_LOSS: Error decoding chunk"), ValueError("NOT_FOUND: no key")],
  }
  for cause, errors in causes.items():
    assert [store.failure_cause(error) for error in errors] == [cause] * len(errors), cause
    transient = cause in ("unavailable", "timed out", "aborted")
    assert [store.is_transient(error) for error in errors] == [transient] * len(errors), cause
  try:  # the outermost error that says something decides: here the cause orbax wraps
    raise RuntimeError("orbax: restore failed") from tensorstore[403]
  except RuntimeError as wrapped:
    assert store.failure_cause(wrapped) == "forbidden"


@pytest.mark.parametrize(("status", "cause"), [(401, "unauthorised"), (403, "forbidden")])
def test_a_checkpoint_refused_to_the_run_stops_it_and_stays(gcs_bucket, gcs_faults, status,
                                                            cause):
  checkpoints = epath.Path(f"{gcs_bucket}/{uuid.uuid4().hex[:8]}/checkpoints")
  state = {"w": jnp.arange(3.0)}
  writer = Checkpointer(checkpoints, max_to_keep=2)
  writer.save(10, state, {"config": {}})
  writer.close()
  reader = Checkpointer(checkpoints, max_to_keep=2)
  gcs_faults.set(rate=1.0, statuses=[status], after_effect=0.0,
                 match=rf"^GET \S+ {checkpoints.parent.name}/checkpoints/10/(progress|state)/")
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=sharding)}
  with pytest.raises(store.StoreUnavailable, match=(
      rf"^Could not read checkpoint {checkpoints}/10: {cause} \(.*\)\. It is left in place")):
    reader.restore_latest(abstract, {})
  gcs_faults.clear()
  assert not (checkpoints.parent / "damaged_checkpoints").exists()
  restored, _ = reader.restore_latest(abstract, {})
  np.testing.assert_array_equal(restored["w"], np.arange(3.0))


# Time-outs: a store that stops answering fails a call within a bound.

_WINDOW = 20.0  # seconds of each fault below
_UNANSWERED = {
    "stalls": lambda name: {"stalls": [[0, _WINDOW]]},
    "delays": lambda name: {"delays": [{"match": f" {name}/", "seconds": _WINDOW}]},
    "black_holes": lambda name: {"black_holes": [[0, _WINDOW]]},
}


@pytest.mark.parametrize("fault", list(_UNANSWERED))
def test_a_store_that_stops_answering_fails_a_call_within_the_time_outs(gcs_bucket, gcs_faults,
                                                                        fault):
  """A read of a store that accepts and never answers, answers too late, or accepts no
  connection: gcsfs makes 3 attempts that time out after 2 s (the time-outs of a 2 s budget),
  1 s and 2 s apart."""
  path = epath.Path(f"{gcs_bucket}/{uuid.uuid4().hex[:8]}/note.txt")
  path.write_text("note")
  try:
    assert clients.use_runner_clients(budget=2.0) == 2.0
    gcs_faults.set(**_UNANSWERED[fault](path.parent.name))
    started = time.monotonic()
    with pytest.raises(store.StoreUnavailable, match=r"while reading .* for 0 s \(timed out: "):
      store.retrying(f"reading {path}", path.read_text, budget=0)
    took = time.monotonic() - started
  finally:
    clients.use_runner_clients()  # the session's default time-outs again
    if fault == "black_holes":  # its window must end before the control path answers again
      time.sleep(max(0.0, started + _WINDOW - time.monotonic()))
  print(f"{fault}: StoreUnavailable after {took:.1f} s")
  # 3 * 2 s + 1 s + 2 s, and up to 1 s of jitter a retry: 9 .. 11 s (measured over two runs of
  # stalls and black holes, one of delays: 9.5 s to 11.0 s).
  assert 3 * 2.0 < took < 30
