"""Tests of experiments/study.py: statistics, grid, commands, results schema, spot check, rerun."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from experiments import study


def test_paired_t_interval_by_hand():
  a = [0.90, 0.92, 0.91, 0.95, 0.93]
  b = [0.89, 0.90, 0.92, 0.91, 0.90]
  d = np.array(a) - np.array(b)  # 0.01, 0.02, -0.01, 0.04, 0.03
  mean = d.sum() / 5
  sd = math.sqrt(((d - mean) ** 2).sum() / 4)
  half = 2.7764451051977987 * sd / math.sqrt(5)  # t_{0.975, 4}
  out = study.paired_t_interval(a, b)
  assert out["n"] == 5
  assert out["mean"] == pytest.approx(mean)
  assert out["std"] == pytest.approx(sd)
  assert out["t_crit"] == pytest.approx(2.7764451051977987)
  assert (out["low"], out["high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))


@pytest.mark.parametrize("seed", range(4))
def test_paired_t_interval_agrees_with_scipy_ttest(seed):
  rng = np.random.default_rng(seed)
  a = rng.normal(0.9, 0.01, 6)
  b = a - rng.normal(0.004 * seed, 0.005, 6)
  out = study.paired_t_interval(a, b)
  test = stats.ttest_rel(a, b)
  low, high = test.confidence_interval(0.95)
  assert (out["low"], out["high"]) == (pytest.approx(low), pytest.approx(high))
  assert (study.verdict(out) != "tie") == (test.pvalue < 0.05)


def test_verdict_and_degenerate_inputs():
  assert study.verdict({"low": 0.1, "high": 0.2}) == "win"
  assert study.verdict({"low": -0.2, "high": -0.1}) == "loss"
  assert study.verdict({"low": -0.1, "high": 0.2}) == "tie"
  assert math.isnan(study.paired_t_interval([1.0], [0.5])["low"])
  with pytest.raises(ValueError, match="paired"):
    study.paired_t_interval([1.0, 2.0], [1.0])


def test_grid_is_paired_and_deduplicated():
  main = study.grid_cells("main", range(5))
  assert len(main) == 5 * len(study.MAIN_DATASETS) * len(study.MAIN_LOSSES)
  every = study.grid_cells("all", range(5))
  # The ablation adds f in {1, 2, 4} x {step, epoch} minus f=4/step (the main grid's cfl_hc2).
  assert len(every) == len(main) + 5 * 5
  assert len({c.run_id for c in every}) == len(every)
  per_seed = [{(c.dataset, c.loss) for c in every if c.seed == s} for s in range(5)]
  assert all(cells == per_seed[0] for cells in per_seed)
  assert study.parse_only("long_tail_50/focal/3") == study.Cell("long_tail_50", "focal", 3)


def test_every_printed_command_builds_the_same_config():
  """The runner's flag parsing of each command gives exactly the study's resolved config."""
  for cell in study.grid_cells("all", [0]):
    overrides = study.cell_overrides(cell, num_epochs=60, eval_every_epochs=2)
    argv = study.reproduce_argv(overrides, "/tmp/x", ["--cpu_devices=1"])
    parsed = study.resolved_dict(study.parse_runner_config(argv))
    assert parsed == study.resolved_dict(study.build_config(overrides)), cell


def test_balanced_is_the_balanced_profile():
  from cfl_jax.data import get_dataset
  as_linear = get_dataset({"name": "digits", "profile": "linear", "imbalance_ratio": 1.0})
  balanced = get_dataset({"name": "digits", "profile": "balanced"})
  assert as_linear.train_class_counts.tolist() == balanced.train_class_counts.tolist()
  x = next(as_linear.train_batches(global_batch_size=64, seed=1, start_step=3))
  y = next(balanced.train_batches(global_batch_size=64, seed=1, start_step=3))
  np.testing.assert_array_equal(x["image"], y["image"])
  np.testing.assert_array_equal(x["label"], y["label"])


def _fake_results(seeds=(0, 1, 2)):
  rng = np.random.default_rng(0)
  runs = []
  for dataset in ("balanced", "long_tail_10"):
    counts = [124] * 10 if dataset == "balanced" else [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]
    losses = study.MAIN_LOSSES + (study.ABLATION_LOSSES if dataset == "long_tail_10" else ())
    for loss in dict.fromkeys(losses):
      for seed in seeds:
        acc = float(rng.uniform(0.8, 0.95))
        per_class = rng.uniform(0.5, 1.0, 10).tolist()
        hp = {"name": "cyclical_focal" if loss.startswith("cfl") else loss,
              "cyclical_factor": 4.0, "xi_granularity": "step"}
        runs.append({
            "run_id": f"{dataset}/{loss}/{seed}", "dataset": dataset, "loss": loss,
            "loss_name": hp["name"], "hyper_parameters": hp, "seed": seed, "num_epochs": 4,
            "test_accuracy": acc, "balanced_accuracy": acc, "many_shot_accuracy": acc,
            "medium_shot_accuracy": acc, "few_shot_accuracy": None if dataset == "balanced"
            else float(rng.uniform(0.3, 0.7)), "per_class_accuracy": per_class,
            "train_class_counts": counts, "test_loss": 0.3, "train_steps": 28,
            "steps_per_epoch": 7, "wall_seconds": 2.0,
            "eval_curve": [{"step": 7 * e, "epoch": float(e), "test_accuracy": acc * e / 4,
                            "few_shot_accuracy": None} for e in range(1, 5)]})
  return {"runs": runs, "seeds": list(seeds), "num_epochs": 4}


def test_report_from_results(tmp_path):
  text = study.write_report(_fake_results(), str(tmp_path))
  assert "## balanced" in text and "## long_tail_10" in text and "## Ablation" in text
  assert "diff vs CE" in text and "In one sentence" in text
  for name in ("xi_schedule.png", "test_accuracy_curves.png", "per_class_accuracy_vs_count.png"):
    assert (tmp_path / name).stat().st_size > 1000
  assert (tmp_path / "REPORT.md").read_text() == text


@pytest.fixture
def compilation_cache(tmp_path):
  """A persistent compilation cache shared by this process and its subprocesses (test speed:
  the rerun loads the programs the in-process run compiled instead of compiling them again)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  settings = {"jax_compilation_cache_dir": str(tmp_path / "xla_cache"),
              "jax_persistent_cache_min_compile_time_secs": 0.0,
              "jax_persistent_cache_min_entry_size_bytes": -1}
  saved = {key: getattr(jax.config, key) for key in settings}
  for key, value in settings.items():
    jax.config.update(key, value)
  cc.reset_cache()
  try:
    yield {key.upper(): str(value) for key, value in settings.items()}
  finally:
    for key, value in saved.items():
      jax.config.update(key, value)
    cc.reset_cache()


def test_spot_check_schema_and_command_reproduces(tmp_path, compilation_cache):
  """One tiny cell in-process, its results.json entry, then its printed command in a new process."""
  cell = study.Cell("long_tail_10", "cfl_reference", 1)
  results = study.run_study(
      [cell], out=str(tmp_path / "out"), num_epochs=3, eval_every_epochs=1,
      workdir_root=str(tmp_path / "study"), reproduce_root=str(tmp_path / "reproduce"),
      progress=False)
  with open(tmp_path / "out" / "results.json") as f:
    assert json.load(f) == json.loads(json.dumps(results))
  (entry,) = results["runs"]
  assert set(study.RUN_KEYS) <= set(entry)
  assert entry["run_id"] == "long_tail_10/cfl_reference/1" and entry["grid"] == ["main"]
  assert entry["hyper_parameters"]["gamma_neg"] == 2.0
  assert entry["hyper_parameters"]["label_smoothing"] == 0.1
  assert entry["train_steps"] == 3 * 7 and len(entry["eval_curve"]) == 3
  assert len(entry["per_class_accuracy"]) == 10 and 0 <= entry["test_accuracy"] <= 1
  assert entry["train_class_counts"] == [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]
  assert entry["command"].startswith("JAX_PLATFORMS=cpu ")
  assert "python -m experiments.train --config=experiments/configs/digits.py" in entry["command"]

  check = study.reproduce(entry, timeout=120, extra_env=compilation_cache)
  assert abs(check["difference_pp"]) <= 0.5
  assert check["reproduced_test_loss"] == pytest.approx(entry["test_loss"], rel=1e-5)
  assert os.path.exists(tmp_path / "reproduce" / "long_tail_10" / "cfl_reference" / "1" /
                        "summary.json")
