"""End-to-end: ``train_and_evaluate`` on digits, and the ``python -m experiments.train`` runner."""

import json
import os
import subprocess
import sys
import textwrap

from cfl_jax.training import resolve_config, train_and_evaluate
from training_helpers import REPO, finish, read_metrics, read_summary, start_trainer, tiny_config

_SUMMARY_KEYS = {"test_accuracy", "balanced_accuracy", "per_class_accuracy", "many_shot_accuracy",
                 "medium_shot_accuracy", "few_shot_accuracy", "train_steps", "wall_seconds",
                 "loss", "seed", "expected_calibration_error", "reliability"}


def test_train_and_evaluate_writes_the_run(tmp_path):
  config = tiny_config(loss={"name": "cyclical_focal_reference", "label_smoothing": 0.1},
                       cyclical={"temperature": {"enabled": True}})
  summary = train_and_evaluate(config, str(tmp_path))

  assert _SUMMARY_KEYS <= set(summary)
  assert summary["train_steps"] == 30 and summary["seed"] == 0 and not summary["preempted"]
  assert summary["num_devices"] == 8 and len(summary["per_class_accuracy"]) == 10
  assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["loss"] > 0
  assert read_summary(tmp_path) == json.loads(json.dumps(summary))
  with open(os.path.join(tmp_path, "config.json")) as f:
    assert json.load(f) == json.loads(resolve_config(config).to_json())

  records = read_metrics(tmp_path)
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
  assert [r["step"] for r in evals] == [15, 30]  # every epoch (15 steps), the last one final
  assert {"loss", "accuracy", "xi", "learning_rate", "grad_norm", "temperature"} <= set(train[0])
  assert evals[-1]["test_accuracy"] == summary["test_accuracy"]
  assert 0.0 <= summary["expected_calibration_error"] <= 1.0
  assert evals[-1]["expected_calibration_error"] == summary["expected_calibration_error"]
  assert sum(summary["reliability"]["count"]) == 500  # every test image, no padding
  assert summary["loss"] == train[-1]["loss"]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "30"]  # max_to_keep=2


def test_runner_refuses_bad_configs_before_compute(tmp_path):
  returncode, output = finish(start_trainer(
      str(tmp_path / "run"), {"loss": {"cyclical_factor": 0.5, "name": "cfl"}}))
  assert returncode != 0
  assert "loss.cyclical_factor must be >= 1.0, got 0.5" in output
  assert "loss.name must be one of" in output
  assert not os.path.exists(tmp_path / "run")


def test_the_multi_label_loss_trains_the_digits_job(tmp_path):
  summary = train_and_evaluate(
      tiny_config(loss={"name": "sigmoid_cyclical_focal"}, eval_every_epochs=0), str(tmp_path))
  train = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
  assert summary["status"] == "completed" and train[-1]["loss"] < train[0]["loss"]
  assert summary["test_accuracy"] > 0.2  # 10 classes: chance is 0.1


# Runs the runner's error path with stderr unbuffered over a stream that prints each write it gets.
_ERROR_WRITES = textwrap.dedent("""
    import io
    import sys
    from experiments import train

    class Writes(io.RawIOBase):
      def writable(self):
        return True

      def write(self, data):
        print(repr(bytes(data)), flush=True)
        return len(data)

    sys.stderr = io.TextIOWrapper(Writes(), write_through=True)
    train._fail("the store kept failing", 1)
""")


def test_the_runners_error_line_is_one_write():
  """Unbuffered (PYTHONUNBUFFERED, as in containers), print() writes a line's break apart; on a
  multi-host run Gloo's notes to the same stream could then land inside the error's line. (In a
  process of its own: the runner's absl flags would clash with the study command's.)"""
  result = subprocess.run([sys.executable, "-c", _ERROR_WRITES], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stdout.splitlines() == [repr(b"experiments.train: error: the store kept failing\n")]
