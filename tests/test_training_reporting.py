"""Tests of cfl_jax.training.reporting: the metric window, the run files and the progress display."""

import json
import logging
import os
import pty
import sys

import jax.numpy as jnp
import pytest

from cfl_jax.training import reporting


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
  silent.append_metrics({"step": 1})
  assert not os.path.exists(tmp_path / "other")


def test_progress_bar_on_a_terminal(monkeypatch):
  leader, follower = pty.openpty()
  with os.fdopen(follower, "w") as terminal:
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = reporting.Progress(total_steps=4, start_step=2, enabled=True)
    progress.advance()
    progress.train(3, {"loss": 0.5, "accuracy": 0.75, "xi": 0.25, "grad_norm": 1.0})
    progress.close()
  shown = os.read(leader, 10_000).decode()
  os.close(leader)
  assert "3/4" in shown and "loss=0.5000" in shown and "xi=0.250" in shown


def test_plain_log_lines_otherwise(caplog):
  progress = reporting.Progress(total_steps=4, start_step=0, enabled=True)
  with caplog.at_level(logging.INFO):
    progress.train(2, {"loss": 0.5, "accuracy": 0.75, "xi": 0.25, "grad_norm": 1.0})
    progress.eval(2, {"test_accuracy": 0.9, "few_shot_accuracy": None})
  assert "step 2/4: loss 0.5, accuracy 0.75, grad_norm 1, xi 0.25" in caplog.text
  assert "eval at step 2: test_accuracy 0.9, few_shot_accuracy n/a" in caplog.text
