"""A run whose workdir, weights and data live in a bucket, as on TPU VMs: ``gs://`` everywhere.

Everything talks to a real GCS API server on loopback (the ``gcs_bucket`` fixture starts
``gcp-storage-emulator``); nothing is mocked. The end-to-end runs are ``python -m
experiments.train`` subprocesses, compared with an uninterrupted run on the local disk.
"""

import json
import logging
import os
import signal
import time
import uuid

from etils import epath
import jax
import ml_collections
import numpy as np
import pytest
import safetensors.numpy

from cfl_jax import store
from cfl_jax.models import import_weights
from cfl_jax.training import reporting, train, train_and_evaluate
import checkpoint_fakes
from training_helpers import comparable, finish, free_port, start_trainer, tensorboard_scalars
from training_helpers import tiny_config, wait_for

# Long enough (a few seconds of steps) that a subprocess is still training when it is interrupted
# after its first checkpoint.
_STEPS = 300
_CONFIG = tiny_config(num_train_steps=_STEPS, checkpoint_every_steps=20, log_every_steps=5,
                      eval_every_epochs=5, max_to_keep=3)

pytestmark = pytest.mark.usefixtures("module_compilation_cache")


@pytest.fixture
def bucket_dir(gcs_bucket):
  """A fresh ``gs://`` prefix for one test."""
  return epath.Path(f"{gcs_bucket}/{uuid.uuid4().hex[:8]}")


def _read_metrics(workdir) -> list[dict]:
  return reporting.read_metrics(epath.Path(workdir) / "metrics.jsonl")


def _read_json(path) -> dict:
  return json.loads(epath.Path(path).read_text())


def _steps(workdir) -> list[int]:
  directory = epath.Path(workdir) / "checkpoints"
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("local"))
  return workdir, train_and_evaluate(_CONFIG, workdir)


# The storage helpers.

def test_atomic_writes_moves_and_listings_in_a_bucket(bucket_dir):
  store.write_atomic(bucket_dir / "a" / "x.json", "one")
  store.write_atomic(bucket_dir / "a" / "sub" / "y.bin", b"two")
  assert store.relative_files(bucket_dir / "a") == {"x.json", "sub/y.bin"}
  store.move_tree(bucket_dir / "a", bucket_dir / "aside" / "a-1")
  assert not (bucket_dir / "a").exists()
  assert (bucket_dir / "aside" / "a-1" / "sub" / "y.bin").read_bytes() == b"two"
  assert store.relative_files(bucket_dir / "aside" / "a-1") == {"x.json", "sub/y.bin"}


@pytest.mark.usefixtures("slow_tensorboard_thread")
def test_run_files_in_a_bucket_appear_at_each_sync_and_resume_at_a_step(bucket_dir, tmp_path):
  """Each sync uploads every record and scalar logged so far, right after they were logged."""
  files = reporting.RunFiles(bucket_dir, enabled=True)
  files.keep_metrics_until(0)
  for step in range(1, 201):
    files.append_metrics({"step": step, "split": "train", "loss": step / 2})
  assert not (bucket_dir / "metrics.jsonl").exists()  # no append on an object store
  files.sync()
  assert [r["step"] for r in _read_metrics(bucket_dir)] == list(range(1, 201))
  uploaded = tensorboard_scalars(bucket_dir / "tensorboard", tmp_path / "first")
  assert uploaded["train/loss"] == [(step, step / 2) for step in range(1, 201)]
  files.append_metrics({"step": 201, "split": "train", "loss": float("nan")})
  files.close()
  assert _read_metrics(bucket_dir)[-1] == {"step": 201, "split": "train", "loss": None}
  closed = tensorboard_scalars(bucket_dir / "tensorboard", tmp_path / "closed")
  assert closed["train/loss"][-1][0] == 201

  resumed = reporting.RunFiles(bucket_dir, enabled=True)
  resumed.keep_metrics_until(5)
  resumed.append_metrics({"step": 6, "split": "train", "loss": -1.0})
  resumed.close()
  assert [r["loss"] for r in _read_metrics(bucket_dir)] == [0.5, 1.0, 1.5, 2.0, 2.5, -1.0]
  expected = [(step, step / 2) for step in range(1, 6)] + [(6, -1.0)]
  resumed_scalars = tensorboard_scalars(bucket_dir / "tensorboard", tmp_path / "resumed")
  assert resumed_scalars["train/loss"] == expected


# The runner on a bucket.

@pytest.mark.usefixtures("runner_subprocesses_share_the_module_cache")
def test_a_second_run_on_a_bucket_workdir_is_refused_within_a_minute(bucket_dir):
  """The README's claim, with the default lock timings (see also test_workdir_lock_bucket.py)."""
  workdir = os.fspath(bucket_dir)
  config = tiny_config(num_train_steps=100_000, checkpoint_every_steps=0, log_every_steps=50)
  first = start_trainer(workdir, config)
  try:
    wait_for(lambda: (bucket_dir / ".lock").exists(), first, timeout=120)
    started = time.time()
    code, output = finish(start_trainer(workdir, config), timeout=60)
    refused_after = time.time() - started
  finally:
    first.send_signal(signal.SIGTERM)  # it saves and stops
  assert code == 1 and "Traceback" not in output, output
  assert (f"The workdir {workdir} is in use by another run (pid {first.pid} on "
          in output.splitlines()[-1])
  # Start-up (imports, data), then the holder's next heartbeat (every 15 s) seen.
  assert refused_after < 60
  print(f"a second run was refused {refused_after:.0f} s after it started")
  code, output = finish(first)
  assert code == 0 and "Preempted after step" in output, output
  assert not (bucket_dir / ".lock").exists()


@pytest.mark.usefixtures("runner_subprocesses_share_the_module_cache")
# Orbax leaves a coroutine of the failed read behind; harmless, but pytest reports it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_checkpoint_in_a_bucket_is_moved_aside(bucket_dir, uninterrupted, caplog):
  workdir = os.fspath(bucket_dir)
  train_and_evaluate(_CONFIG, workdir)
  assert _steps(workdir) == [_STEPS - 40, _STEPS - 20, _STEPS]
  newest = bucket_dir / "checkpoints" / str(_STEPS) / "state"
  for name in store.relative_files(newest):
    (newest / name).write_bytes(b"garbage")
  with caplog.at_level(logging.WARNING):
    summary = train_and_evaluate(_CONFIG, workdir)
  assert summary["resumed_from_step"] == _STEPS - 20
  assert comparable(summary) == comparable(uninterrupted[1])
  aside = [p.name for p in (bucket_dir / "damaged_checkpoints").iterdir()]
  assert len(aside) == 1 and aside[0].startswith(f"{_STEPS}-")
  assert _steps(workdir) == [_STEPS - 40, _STEPS - 20, _STEPS]
  assert "Skipped the damaged checkpoint" in caplog.text


def test_init_from_a_weights_file_in_a_bucket(bucket_dir, tmp_path):
  local = tmp_path / "resnet50.safetensors"
  safetensors.numpy.save_file(checkpoint_fakes.random_tensors("resnet50"), str(local))
  remote = bucket_dir / "weights" / "resnet50.safetensors"
  remote.parent.mkdir(parents=True, exist_ok=True)
  remote.write_bytes(local.read_bytes())
  train._check_weights_file(ml_collections.ConfigDict(  # pylint: disable=protected-access
      {"name": "resnet50", "init_from": os.fspath(remote)}))
  jax.tree.map(np.testing.assert_array_equal,
               import_weights("resnet50", os.fspath(remote), num_classes=10),
               import_weights("resnet50", local, num_classes=10))
  with pytest.raises(FileNotFoundError, match="No weights file at 'gs://"):
    import_weights("resnet50", os.fspath(bucket_dir / "missing.safetensors"), num_classes=10)



def _two_processes(workdir: str, config) -> list:
  """The runner as processes 0 and 1 of one ``jax.distributed`` job, 4 CPU devices each."""
  flags = ["--distributed", f"--coordinator_address=127.0.0.1:{free_port()}",
           "--num_processes=2", "--initialization_timeout=60"]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  return [start_trainer(workdir, config, *flags, f"--process_id={i}", env=env) for i in range(2)]


def _finish_all(processes, timeout: float = 240) -> list[tuple[int, str]]:
  try:
    return [finish(process, timeout=timeout) for process in processes]
  finally:
    for process in processes:  # a missing peer would leave the other one waiting
      process.kill()


def test_two_processes_share_a_bucket_workdir_and_resume_together(bucket_dir, tmp_path):
  config = tiny_config(num_train_steps=40, checkpoint_every_steps=10, log_every_steps=5,
                       eval_every_epochs=2)
  workdir = os.fspath(bucket_dir)
  processes = _two_processes(workdir, config)
  try:
    # The run files reach the bucket with the first checkpoint: preempt process 0 only; JAX's
    # preemption sync stops both at the same step, and both write their shards of it.
    wait_for(lambda: (bucket_dir / "metrics.jsonl").exists(), processes[0], timeout=240)
    processes[0].send_signal(signal.SIGTERM)
  finally:
    results = _finish_all(processes)
  stopped = _steps(workdir)[-1]
  for returncode, output in results:
    assert returncode == 0 and f"Preempted after step {stopped}" in output, output
  checkpoint = store.relative_files(bucket_dir / "checkpoints" / str(stopped))
  for process in range(2):
    assert any(name.startswith(f"state/ocdbt.process_{process}/") for name in checkpoint)

  resumed = _two_processes(workdir, config)
  results = _finish_all(resumed)
  assert all(returncode == 0 for returncode, _ in results), results[0][1] + results[1][1]
  summary = _read_json(bucket_dir / "summary.json")
  assert summary["resumed_from_step"] == stopped and summary["num_processes"] == 2
  # One writer: one set of run files, each step once in the records and TensorBoard, all event
  # files process 0's (named after its pid); the compilation cache both processes read (JAX
  # writes it from process 0).
  assert {p.name for p in bucket_dir.iterdir()} == {
      "checkpoints", "compilation_cache", "config.json", "metrics.jsonl", "summary.json",
      "tensorboard"}
  train_steps = [r["step"] for r in _read_metrics(workdir) if r["split"] == "train"]
  assert train_steps == sorted(set(train_steps))
  scalars = tensorboard_scalars(bucket_dir / "tensorboard", tmp_path / "events")
  assert [step for step, _ in scalars["train/loss"]] == train_steps
  writers = {int(p.name.rsplit(".", 1)[1]) for p in (bucket_dir / "tensorboard").iterdir()}
  assert writers == {processes[0].pid, resumed[0].pid}

  # The trajectory of one process on 8 devices, to float precision while it lasts: the all-reduces
  # over two processes sum in another order, which 20 steps keep under 1e-5 and later steps
  # amplify; the end stays close.
  reference_dir = str(tmp_path / "one_process")
  reference_summary = train_and_evaluate(config, reference_dir)
  records, reference = _read_metrics(workdir), _read_metrics(reference_dir)
  assert [(r["step"], r["split"]) for r in records] == [(r["step"], r["split"])
                                                        for r in reference]
  for record, expected in zip(records, reference):
    if expected["step"] <= 20 and expected["split"] == "train":
      numbers = {key: value for key, value in expected.items() if isinstance(value, float)}
      assert {key: record[key] for key in numbers} == pytest.approx(numbers, rel=1e-5, abs=1e-6)
  assert summary["test_accuracy"] == pytest.approx(reference_summary["test_accuracy"], abs=0.02)
  assert summary["loss"] == pytest.approx(reference_summary["loss"], rel=0.2)
