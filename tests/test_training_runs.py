"""One seed, one run: resumed after SIGTERM and SIGKILL, or spread over two processes, a run ends
as the uninterrupted single-process run does.

The interrupted and the two-process runs are real ``python -m experiments.train`` subprocesses;
the reference and the resumed runs are in-process ``train_and_evaluate`` calls. All share one
config, so one reference serves every comparison.
"""

import gc
import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from cfl_jax.training import CheckpointError, train_and_evaluate
from training_helpers import (REPO, comparable, final_params, finish, free_port, read_metrics,
                              read_summary, start_trainer, tensorboard_scalars, tiny_config,
                              wait_for)

# Long enough (~1 s of steps) that a subprocess is still training when it is interrupted.
_CONFIG = tiny_config(num_train_steps=150, checkpoint_every_steps=20, log_every_steps=5,
                      eval_every_epochs=4, max_to_keep=10)
_DIGITS = f"--config={os.path.join(REPO, 'experiments', 'configs', 'digits.py')}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  return workdir, train_and_evaluate(_CONFIG, workdir)


def _checkpoint_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


@pytest.mark.usefixtures("runner_subprocesses_share_the_module_cache")  # the reference's programs
def test_sigterm_then_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
  # The runner's default workdir, ./runs/<config.name>, under the working directory.
  workdir = str(tmp_path / "runs" / "tiny")

  # SIGTERM (preemption notice): a checkpoint where it stopped, mid-run, and exit status 0.
  process = start_trainer(None, _CONFIG, _DIGITS, cwd=str(tmp_path))
  wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")), process)
  process.send_signal(signal.SIGTERM)
  returncode, output = finish(process)
  assert returncode == 0 and "Preempted after step" in output, output
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  stopped = _checkpoint_steps(workdir)[-1]
  assert read_metrics(workdir)[-1]["step"] <= stopped < 150

  # The same command resumes; SIGKILL it (no chance to save) after its next checkpoint.
  process = start_trainer(None, _CONFIG, _DIGITS, cwd=str(tmp_path))
  wait_for(lambda: _checkpoint_steps(workdir)[-1] > stopped, process)
  process.kill()
  process.wait()
  assert not os.path.exists(os.path.join(workdir, "summary.json"))

  summary = train_and_evaluate(_CONFIG, workdir)
  assert stopped < summary["resumed_from_step"] < 150
  reference_dir, reference_summary = uninterrupted
  assert comparable(read_summary(workdir)) == comparable(reference_summary)
  assert summary["best_step"] == reference_summary["best_step"]  # the best, none lost
  assert read_metrics(workdir) == read_metrics(reference_dir)  # every log line, exactly
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(reference_dir))



def _logged_step(workdir):
  """The last step in metrics.jsonl, 0 while there is none (or it is being written)."""
  try:
    return read_metrics(workdir)[-1]["step"]
  except (FileNotFoundError, IndexError, json.JSONDecodeError):
    return 0


def test_two_processes_agree_with_one_and_stop_together_on_sigterm(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  flags = ["--distributed", f"--coordinator_address=127.0.0.1:{free_port()}",
           "--num_processes=2", "--initialization_timeout=60"]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  processes = [start_trainer(workdir, _CONFIG, *flags, f"--process_id={i}", env=env)
               for i in range(2)]
  try:
    # Cross-process all-reduces are slow on CPU (~0.2 s a step): compare the first 20 steps,
    # then preempt process 0 only; JAX's preemption sync stops both at the same step.
    wait_for(lambda: _logged_step(workdir) >= 20, processes[0], timeout=240)
    processes[0].send_signal(signal.SIGTERM)
    results = [finish(process, timeout=240) for process in processes]
  finally:
    for process in processes:  # a missing peer would leave the other one waiting
      process.kill()
  stopped = _checkpoint_steps(workdir)[-1]
  for returncode, output in results:
    assert returncode == 0, output
    assert f"Preempted after step {stopped}" in output
  assert "on 8 cpu device(s), 2 process(es)" in results[0][1]

  # The same trajectory to float precision (the all-reduces over two processes sum in another
  # order than over eight local devices; the relative difference grows from 1e-8 at step 10 and
  # 2e-7 at step 20 to 1e-4 at step 25 and 5e-3 at step 30: chaotic amplification).
  reference_dir, reference_summary = uninterrupted
  reference = {(r["step"], r["split"]): r for r in read_metrics(reference_dir)}
  records = [r for r in read_metrics(workdir) if r["step"] <= 20]
  assert [r["step"] for r in records] == [5, 10, 15, 20]
  for record in records:
    expected = reference[record["step"], record["split"]]
    assert record.keys() == expected.keys() and record["split"] == expected["split"]
    numbers = {key: value for key, value in expected.items() if key != "split"}
    assert {key: record[key] for key in numbers} == pytest.approx(numbers, rel=1e-5, abs=1e-6)

  # The two-process checkpoint resumes in one process and ends close to the reference.
  summary = train_and_evaluate(_CONFIG, workdir)
  assert summary["resumed_from_step"] == stopped and summary["train_steps"] == 150
  assert summary["test_accuracy"] == pytest.approx(reference_summary["test_accuracy"], abs=0.02)
  assert summary["loss"] == pytest.approx(reference_summary["loss"], rel=0.2)


def test_the_summary_reports_the_best_evaluation(uninterrupted):
  """timm's and LDAM's number: the first evaluation with the highest test top-1, in
  summary.json and TensorBoard, beside the final model's metrics."""
  workdir, summary = uninterrupted
  evaluations = [r for r in read_metrics(workdir) if r["split"] == "eval"]
  assert [r["step"] for r in evaluations] == [60, 120, 150]
  highest = max(r["test_accuracy"] for r in evaluations)
  first = next(r for r in evaluations if r["test_accuracy"] == highest)
  assert read_summary(workdir)["best_test_accuracy"] == highest
  assert (summary["best_epoch"], summary["best_step"]) == (first["epoch"], first["step"])
  assert summary["test_accuracy"] == evaluations[-1]["test_accuracy"]  # the final model's
  assert not any(key.startswith(("best_ema", "best_validation")) for key in summary)
  # float32: the best so far at each evaluation
  scalars = tensorboard_scalars(os.path.join(workdir, "tensorboard"))["best/test_accuracy"]
  assert [step for step, _ in scalars] == [60, 120, 150]
  assert [value for _, value in scalars] == pytest.approx(
      [max(r["test_accuracy"] for r in evaluations[:i + 1]) for i in range(3)])


def test_a_checkpoint_without_best_metrics_rebuilds_them_from_the_records(tmp_path,
                                                                           uninterrupted):
  """A checkpoint written before it kept the best metrics: they come from metrics.jsonl."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(uninterrupted[0], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "150"))
  progress_path = os.path.join(workdir, "checkpoints", "140", "progress", "metadata")
  with open(progress_path) as f:
    progress = json.load(f)
  with open(progress_path, "w") as f:
    json.dump({key: value for key, value in progress.items() if key != "best"}, f)
  records = read_metrics(workdir)
  for record in records:  # an evaluation before the checkpoint, made the best
    if record["split"] == "eval" and record["step"] == 60:
      record["test_accuracy"] = 0.999
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(record) + "\n" for record in records)
  summary = train_and_evaluate(_CONFIG, workdir)
  assert summary["resumed_from_step"] == 140
  assert (summary["best_test_accuracy"], summary["best_step"]) == (0.999, 60)


def test_rerunning_a_finished_run_changes_nothing(uninterrupted):
  reference_dir, reference_summary = uninterrupted
  summary = train_and_evaluate(_CONFIG, reference_dir)
  assert summary["resumed_from_step"] == 150 and summary["train_steps"] == 150
  assert comparable(summary) == comparable(reference_summary)
  assert sum(r["split"] == "eval" and r["step"] == 150 for r in read_metrics(reference_dir)) == 1


# Orbax leaves a coroutine of the failed read behind; harmless, but pytest reports it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_checkpoint_is_moved_aside_and_the_previous_one_resumed(tmp_path, uninterrupted,
                                                                          caplog):
  reference_dir, reference_summary = uninterrupted
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference_dir, workdir)
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "150", "state")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 155, "spl')  # a torn last line, as a kill mid-write leaves it
  with caplog.at_level("WARNING"):
    summary = train_and_evaluate(_CONFIG, workdir)
  assert summary["resumed_from_step"] == 140
  assert comparable(summary) == comparable(reference_summary)
  aside = os.listdir(os.path.join(workdir, "damaged_checkpoints"))
  assert len(aside) == 1 and aside[0].startswith("150-")
  assert 150 in _checkpoint_steps(workdir)  # written again by the resumed run
  assert "Skipped the damaged checkpoint" in caplog.text and "torn last line" in caplog.text
  assert [r["step"] for r in read_metrics(workdir)] == [r["step"] for r in
                                                        read_metrics(reference_dir)]
  gc.collect()


def test_reporting_keys_may_change_on_resume(tmp_path, uninterrupted):
  workdir = str(tmp_path / "copy")
  shutil.copytree(uninterrupted[0], workdir)
  summary = train_and_evaluate({**_CONFIG, "name": "renamed", "log_every_steps": 10,
                                "max_to_keep": 3, "eval_every_epochs": 2}, workdir)
  assert summary["resumed_from_step"] == 150 and summary["name"] == "renamed"
  assert summary["test_accuracy"] == uninterrupted[1]["test_accuracy"]


def test_a_checkpoint_of_another_config_is_refused(uninterrupted):
  with pytest.raises(CheckpointError, match=r"different config[\s\S]*loss.gamma_hc: 2.0 -> 3.0"):
    train_and_evaluate({**_CONFIG, "loss": {"gamma_hc": 3.0}}, uninterrupted[0])
