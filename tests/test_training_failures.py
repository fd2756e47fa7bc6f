"""Runs that go wrong say so: divergence, a shared workdir, a failed save, usage errors.

Each case is what a user does: the real ``python -m experiments.train`` in a subprocess, and
its exit status, its last words and the files it leaves.
"""

import os
import resource
import signal

import numpy as np
import orbax.checkpoint as ocp
import pytest

from training_helpers import (finish, read_metrics, read_summary, start_trainer,
                              tiny_config, wait_for)


def _run(workdir, config, *flags, **kwargs) -> tuple[int, str]:
  return finish(start_trainer(workdir, config, *flags, **kwargs))


def _last_line(output: str) -> str:
  return output.strip().splitlines()[-1]


def test_a_diverging_run_stops_with_an_error_and_keeps_only_finite_checkpoints(
    tmp_path, runner_subprocesses_share_the_module_cache):
  del runner_subprocesses_share_the_module_cache  # used for its effect (test speed)
  workdir = str(tmp_path / "nan")
  config = tiny_config(num_train_steps=60, checkpoint_every_steps=5,
                       optimizer={"learning_rate": 1e6})
  returncode, output = _run(workdir, config)
  assert returncode == 1, output
  assert "Traceback" not in output
  assert _last_line(output).startswith("experiments.train: error: Training diverged by step ")
  summary = read_summary(workdir)  # strict JSON: NaN would fail to parse
  assert summary["status"] == "diverged" and "diverged" in summary["error"]
  steps = [r["step"] for r in read_metrics(workdir) if r["split"] == "train"]
  assert steps and steps[-1] <= 10  # stopped within one logging window of the first NaN
  directory = os.path.join(workdir, "checkpoints")
  with ocp.StandardCheckpointer() as checkpointer:
    for name in (n for n in os.listdir(directory) if n.isdigit()):
      params = checkpointer.restore(os.path.join(directory, name, "state"))["params"]
      assert all(np.isfinite(leaf).all() for leaf in _leaves(params)), name


def _skipping_run(workdir, limit, env) -> tuple[int, str, dict]:
  """The issue-17 command, short: learning rate 1e4 with EMA, skipping non-finite updates."""
  config = tiny_config(num_train_steps=10, ema_decay=0.9,
                       optimizer={"learning_rate": 1e4, "skip_nonfinite_updates": limit})
  returncode, output = _run(workdir, config, env=env)
  return returncode, output, read_summary(workdir)


def test_skipped_non_finite_updates_keep_the_run_finite(tmp_path, module_compilation_cache):
  """Most updates are skipped, and the run completes with a finite state (BatchNorm statistics
  and EMA included): both evaluations run, and the final checkpoint is written."""
  returncode, output, summary = _skipping_run(str(tmp_path / "skip"), 100_000,
                                              module_compilation_cache)
  assert returncode == 0, output
  assert summary["status"] == "completed" and summary["train_steps"] == 10
  assert 0 < summary["skipped_updates"] < 10
  for key in ("test_accuracy", "ema_test_accuracy"):
    assert 0 <= summary[key] <= 1, key


def test_more_non_finite_updates_in_a_row_than_allowed_stop_the_run(tmp_path,
                                                                    module_compilation_cache):
  returncode, output, summary = _skipping_run(str(tmp_path / "skip"), 2,
                                              module_compilation_cache)
  assert returncode == 1 and summary["status"] == "diverged", output
  assert summary["error"].startswith("Training diverged by step ")
  assert "more than optimizer.skip_nonfinite_updates=2 in a row" in summary["error"]


def _leaves(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield np.asarray(tree)


def test_a_second_run_in_the_same_workdir_is_refused_at_once(tmp_path):
  workdir = str(tmp_path / "shared")
  config = tiny_config(num_train_steps=400, checkpoint_every_steps=0)
  first = start_trainer(workdir, config)
  wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")), first)
  returncode, output = _run(workdir, config)
  first.send_signal(signal.SIGTERM)  # let the first one save and stop
  first_code, first_output = finish(first)
  assert returncode == 1 and "Traceback" not in output
  assert (f"The workdir {workdir} is in use by another run (pid {first.pid} on "
          in _last_line(output))
  assert first_code == 0, first_output
  records = [(r["step"], r["split"]) for r in read_metrics(workdir)]
  assert len(records) == len(set(records)) > 0  # one writer: no duplicate records


def _small_files():
  """Files of at most 100 kB (the checkpoint's data files are larger), as on a full disk."""
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
  resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_failed_save_stops_the_run_at_once(tmp_path):
  workdir = str(tmp_path / "full")
  config = tiny_config(num_train_steps=200, checkpoint_every_steps=20, log_every_steps=5)
  returncode, output = _run(workdir, config, preexec_fn=_small_files)
  assert returncode == 1, output
  assert "Traceback" not in output
  last = _last_line(output)
  assert last.startswith(
      f"experiments.train: error: Could not save checkpoint {workdir}/checkpoints/20: "), last
  assert "[Errno 27] File too large" in last and "no earlier checkpoint exists" in last
  # Stopped as soon as the background save failed, at the latest at the next save (step 40).
  assert max(r["step"] for r in read_metrics(workdir)) <= 40


@pytest.mark.parametrize("flags, status, expected", [
    (["--config.optimizer.learning_rat=0.1", "--config.loss.nme=focal"], 2,
     "unknown config key 'optimizer.learning_rat' (did you mean 'optimizer.learning_rate'?); "
     "unknown config key 'loss.nme' (did you mean 'loss.name'?)"),
    (["--config.dataset.ratio=3"], 2,
     "unknown config key 'dataset.ratio' (dataset 'digits' accepts profile, max_count, "
     "imbalance_ratio"),
    (["--config.loss.cyclical_factor=0.5", "--config.loss.gamma_hc=-1.0"], 1,
     "loss.gamma_hc must be >= 0.0, got -1.0"),
    (["--config.batch_size=30"], 1, "experiments.train's --cpu_devices"),
    (["surplus"], 2, "unexpected arguments: surplus"),
])
def test_usage_errors_are_one_message_without_a_traceback(tmp_path, flags, status, expected):
  returncode, output = _run(str(tmp_path / "w"), {}, *flags)
  assert returncode == status, output
  assert "Traceback" not in output
  assert expected in output


def test_help_exits_zero_and_a_run_starts_without_backend_noise(
    tmp_path, runner_subprocesses_share_the_module_cache):
  del runner_subprocesses_share_the_module_cache  # used for its effect (test speed)
  returncode, output = _run(None, {}, "--help")
  assert returncode == 0 and "--workdir" in output and "--cpu_devices" in output
  returncode, output = _run(str(tmp_path / "quiet"), tiny_config(num_train_steps=2))
  assert returncode == 0, output
  assert "libtpu" not in output and "Unable to initialize backend" not in output
  assert read_summary(str(tmp_path / "quiet"))["status"] == "completed"
