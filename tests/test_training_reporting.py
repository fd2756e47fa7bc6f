"""Tests of cfl_jax.training.reporting: the metric window, the run files and the progress
display."""

import json
import logging
import os
import pty
import select
import sys

import jax.numpy as jnp
import pytest

from cfl_jax.training import reporting
from training_helpers import tensorboard_scalars


def _steps(values):
  return [{"loss": jnp.float32(v), "accuracy": jnp.float32(v / 10), "grad_norm": jnp.float32(1.0),
           "xi": jnp.float32(1 - v / 10)} for v in values]


def test_window_averages_measurements_and_keeps_the_last_schedule_values():
  window = reporting.MetricWindow()
  for metrics in _steps([1.0, 2.0, 6.0]):
    window.add(metrics)
  record = window.flush()
  assert record["loss"] == pytest.approx(3.0) and record["accuracy"] == pytest.approx(0.3)
  assert record["xi"] == pytest.approx(0.4)  # the value at the window's last step
  window.add(_steps([5.0])[0])
  assert window.flush()["loss"] == 5.0  # a new window


def test_window_restored_from_a_snapshot_continues_exactly():
  steps = _steps([0.1, 0.7, 0.3, 0.9])
  whole, first = reporting.MetricWindow(), reporting.MetricWindow()
  for metrics in steps:
    whole.add(metrics)
  for metrics in steps[:2]:
    first.add(metrics)
  resumed = reporting.MetricWindow(json.loads(json.dumps(first.snapshot())))
  for metrics in steps[2:]:
    resumed.add(metrics)
  assert resumed.flush() == whole.flush()


def test_run_files_drop_the_records_after_the_resumed_step(tmp_path):
  files = reporting.RunFiles(str(tmp_path), enabled=True)
  for step in (5, 10, 15):
    files.append_metrics({"step": step, "split": "train"})
  files.keep_metrics_until(10)
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [5, 10]
  files.write_summary({"a": 1})
  assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}
  silent = reporting.RunFiles(str(tmp_path / "other"), enabled=False)  # processes > 0
  silent.keep_metrics_until(0)
  silent.append_metrics({"step": 1})
  assert not os.path.exists(tmp_path / "other")


def test_tensorboard_scalars_next_to_the_jsonl_records(tmp_path):
  files = reporting.RunFiles(str(tmp_path), enabled=True)
  files.keep_metrics_until(0)
  for step in (5, 10):
    files.append_metrics({"step": step, "epoch": step / 5, "split": "train", "loss": step / 10,
                          "xi": 1 - step / 20, "learning_rate": 0.1})
  files.append_metrics({"step": 10, "epoch": 2.0, "split": "eval", "test_accuracy": 0.75,
                        "few_shot_accuracy": None, "per_class_accuracy": [0.5, 1.0]})
  files.close()
  scalars = tensorboard_scalars(tmp_path / "tensorboard")
  assert scalars["train/loss"] == [(5, 0.5), (10, 1.0)]
  assert scalars["train/xi"] == [(5, 0.75), (10, 0.5)]
  assert scalars["eval/test_accuracy"] == [(10, 0.75)]
  assert "eval/few_shot_accuracy" not in scalars and "eval/per_class_accuracy" not in scalars


@pytest.mark.usefixtures("slow_tensorboard_thread")
def test_a_sync_writes_out_every_scalar_logged_before_it(tmp_path):
  """What a run killed right after a checkpoint leaves: every scalar up to the checkpoint."""
  files = reporting.RunFiles(str(tmp_path), enabled=True)
  files.keep_metrics_until(0)
  for step in range(1, 101):
    files.append_metrics({"step": step, "split": "train", "loss": step / 2})
  files.sync()
  assert tensorboard_scalars(tmp_path / "tensorboard")["train/loss"] == [
      (step, step / 2) for step in range(1, 101)]
  files.append_metrics({"step": 101, "split": "train", "loss": 0.0})
  files.close()
  assert tensorboard_scalars(tmp_path / "tensorboard")["train/loss"][-1] == (101, 0.0)


@pytest.mark.parametrize("resumed_from", [0, 10])
def test_a_restarted_run_holds_each_tensorboard_step_once(tmp_path, resumed_from):
  first = reporting.RunFiles(str(tmp_path), enabled=True)
  first.keep_metrics_until(0)
  for step in (5, 10, 15):
    first.append_metrics({"step": step, "split": "train", "loss": 1.0})
  first.close()
  # Restarted in the same second by the same process: the file names alone cannot order them.
  resumed = reporting.RunFiles(str(tmp_path), enabled=True)
  resumed.keep_metrics_until(resumed_from)
  for step in (5, 10, 15):
    if step > resumed_from:
      resumed.append_metrics({"step": step, "split": "train", "loss": 2.0})
  resumed.close()
  assert len(os.listdir(tmp_path / "tensorboard")) == 2  # both sessions' files are there
  expected = [(step, 1.0 if step <= resumed_from else 2.0) for step in (5, 10, 15)]
  assert tensorboard_scalars(tmp_path / "tensorboard")["train/loss"] == expected
  with open(tmp_path / "metrics.jsonl") as f:
    assert [(r["step"], r["loss"]) for r in map(json.loads, f)] == expected


def test_json_files_are_strict_json(tmp_path):
  path = tmp_path / "deep" / "summary.json"
  reporting.write_json(str(path), {"loss": float("nan"), "curve": [1.0, float("inf")], "n": 2})
  text = path.read_text()
  assert "NaN" not in text and "Infinity" not in text
  assert json.loads(text) == {"loss": None, "curve": [1.0, None], "n": 2}
  assert os.listdir(path.parent) == ["summary.json"]  # no temporary file left behind


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 5, "split": "train"}\n{"step": 10, "spl')
  with caplog.at_level(logging.WARNING):
    assert reporting.read_metrics(str(path)) == [{"step": 5, "split": "train"}]
  assert "torn last line" in caplog.text and str(path) in caplog.text
  path.write_text('{"step": 5, "spl\n{"step": 10, "split": "train"}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 1, is not valid JSON"):
    reporting.read_metrics(str(path))


def _read_available(fd: int) -> str:
  """Everything written to the pseudo-terminal ``fd`` so far (it may arrive in pieces)."""
  chunks = []
  while select.select([fd], [], [], 1.0)[0]:
    try:
      chunk = os.read(fd, 10_000)
    except OSError:  # EIO: the terminal side is closed and everything has been read
      break
    if not chunk:
      break
    chunks.append(chunk)
  return b"".join(chunks).decode()


def test_progress_bar_on_a_terminal(monkeypatch):
  leader, follower = pty.openpty()
  with os.fdopen(follower, "w") as terminal:
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = reporting.Progress(total_steps=4, start_step=2, enabled=True)
    progress.advance()
    progress.train(3, {"loss": 0.5, "accuracy": 0.75, "xi": 0.25, "grad_norm": 1.0})
    progress.close()
  shown = _read_available(leader)
  os.close(leader)
  assert "3/4" in shown and "loss=0.5000" in shown and "xi=0.250" in shown


def test_plain_log_lines_otherwise(caplog):
  progress = reporting.Progress(total_steps=4, start_step=0, enabled=True)
  with caplog.at_level(logging.INFO):
    progress.train(2, {"loss": 0.5, "accuracy": 0.75, "xi": 0.25, "grad_norm": 1.0})
    progress.eval(2, {"test_accuracy": 0.9, "few_shot_accuracy": None})
  assert "step 2/4: loss 0.5, accuracy 0.75, grad_norm 1, xi 0.25" in caplog.text
  assert "eval at step 2: test_accuracy 0.9, few_shot_accuracy n/a" in caplog.text


def _evaluation(step, accuracy, **metrics):
  return {"step": step, "epoch": step / 10, "split": "eval", "test_accuracy": accuracy,
          **metrics}


def test_best_is_the_first_of_the_highest_evaluations():
  best = reporting.BestMetrics()
  for step, accuracy in ((10, 0.5), (20, 0.75), (30, float("nan")), (40, 0.75), (50, 0.6)):
    best.update(_evaluation(step, accuracy))
  assert best.summary() == {"best_test_accuracy": 0.75, "best_epoch": 2.0, "best_step": 20}


def test_best_of_the_ema_weights_and_the_test_metrics_chosen_on_validation():
  best = reporting.BestMetrics()
  best.update(_evaluation(10, 0.5, ema_test_accuracy=0.4, validation_accuracy=0.7,
                          few_shot_accuracy=0.1, test_loss=2.0))
  best.update(_evaluation(20, 0.6, ema_test_accuracy=0.55, validation_accuracy=0.6,
                          few_shot_accuracy=0.3, test_loss=1.5))
  summary = best.summary()
  assert (summary["best_test_accuracy"], summary["best_epoch"]) == (0.6, 2.0)
  assert (summary["best_ema_test_accuracy"], summary["best_ema_epoch"]) == (0.55, 2.0)
  # OLTR: the test metrics of the evaluation with the best validation accuracy, not the best test.
  assert (summary["best_validation_accuracy"], summary["best_validation_epoch"]) == (0.7, 1.0)
  assert summary["test_accuracy_at_best_validation"] == 0.5
  assert summary["few_shot_accuracy_at_best_validation"] == 0.1
  assert summary["test_loss_at_best_validation"] == 2.0
  assert summary["many_shot_accuracy_at_best_validation"] is None  # not in the records
  assert set(best.scalars()) == {"test_accuracy", "ema_test_accuracy", "validation_accuracy",
                                 "test_accuracy_at_best_validation",
                                 "few_shot_accuracy_at_best_validation",
                                 "test_loss_at_best_validation"}


def test_best_continues_from_its_snapshot_and_rebuilds_from_the_records():
  records = [_evaluation(10, 0.5, validation_accuracy=0.5), {"step": 15, "split": "train"},
             _evaluation(20, 0.7, validation_accuracy=0.4), _evaluation(30, 0.6,
                                                                        validation_accuracy=0.8)]
  evaluations = [record for record in records if record["split"] == "eval"]
  whole, first = reporting.BestMetrics(), reporting.BestMetrics()
  for record in evaluations:
    whole.update(record)
  first.update(evaluations[0])
  resumed = reporting.BestMetrics(json.loads(json.dumps(first.snapshot())))
  for record in evaluations[1:]:
    resumed.update(record)
  assert resumed.summary() == whole.summary()
  assert reporting.BestMetrics.from_records(records).summary() == whole.summary()
  assert reporting.BestMetrics().summary() == {}


def test_tensorboard_has_the_best_values_so_far(tmp_path):
  files = reporting.RunFiles(str(tmp_path), enabled=True)
  files.keep_metrics_until(0)
  best = reporting.BestMetrics()
  for step, accuracy in ((10, 0.5), (20, 0.75), (30, 0.625)):
    record = _evaluation(step, accuracy)
    files.append_metrics(record)
    best.update(record)
    files.append_best(step, best)
  files.close()
  scalars = tensorboard_scalars(tmp_path / "tensorboard")
  assert scalars["best/test_accuracy"] == [(10, 0.5), (20, 0.75), (30, 0.75)]
  assert not any(tag.endswith(("_epoch", "_step")) for tag in scalars)
  assert all(r["split"] == "eval" for r in reporting.read_metrics(tmp_path / "metrics.jsonl"))
