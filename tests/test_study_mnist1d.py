"""Tests of the MNIST-1D study grid, its baselines part, shards, report and a spot check."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from cfl_jax.data import get_dataset
from cfl_jax.training import reporting
from cfl_jax.training import resolve_config
from experiments.study import grid as grid_lib
from experiments.study import mnist1d
from experiments.study import plots
from experiments.study import provenance
from experiments.study import report
from experiments.study import run

GRID = mnist1d.GRID
LOSSES = ("cross_entropy", "cross_entropy_ls", "focal", "cfl_hc2", "cfl_hc3", "cfl_hc2_ls",
          "cfl_reference")
DATASETS = ("standard", "linear_580_220", "linear_490_310", "long_tail_10", "long_tail_50",
            "long_tail_100")


def _overrides(cell, steps=50):
  return GRID.overrides(cell, num_epochs=60, eval_every_epochs=5, num_train_steps=steps)


def test_grid_is_seven_losses_on_six_profiles_plus_three_baselines():
  assert tuple(GRID.losses) == LOSSES and tuple(GRID.datasets) == DATASETS
  main = GRID.cells("main", range(10))
  assert len(main) == len({c.run_id for c in main}) == 420
  every = GRID.cells("all", range(10))
  extra = [c for c in every if c not in main]
  assert {(c.dataset, c.loss) for c in extra} == {("standard", m) for m in ("logistic", "mlp",
                                                                            "cnn")}
  assert sorted({c.seed for c in extra}) == list(range(GRID.baselines.seeds))
  assert all(GRID.grids_of(c) == ["baselines"] for c in extra)


@pytest.mark.parametrize("label", DATASETS)
def test_each_profile_builds_its_training_set(label):
  config = resolve_config(provenance.build_config(
      GRID.config_file, _overrides(grid_lib.Cell(label, "cfl_hc2", 0))))
  counts = get_dataset(config.dataset).train_class_counts
  if label == "standard":
    assert counts.sum() == 4000
  elif label.startswith("linear"):
    head, tail = map(int, label.split("_")[1:])
    assert (counts[0], counts[-1]) == (head, tail) and np.all(np.diff(counts) < 0)
  else:  # docs/method.md §5: n_i = int(n_max * (1 / rho)^(i / (C - 1)))
    rho = int(label.split("_")[-1])
    assert counts.tolist() == [int(400 * (1 / rho) ** (i / 9)) for i in range(10)]


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_is_the_cnn_at_the_study_length(loss):
  config = resolve_config(provenance.build_config(
      GRID.config_file, _overrides(grid_lib.Cell("standard", loss, 3), steps=1500)))
  assert (config.model.name, config.num_train_steps, config.seed) == ("mnist1d_cnn", 1500, 3)
  assert config.loss.label_smoothing == (0.1 if loss.endswith("_ls") or loss == "cfl_reference"
                                         else 0.0)


@pytest.mark.parametrize("model", ("logistic", "mlp", "cnn"))
def test_baselines_keep_the_published_length(model):
  config = resolve_config(provenance.build_config(
      GRID.config_file, _overrides(grid_lib.Cell("standard", model, 0), steps=1500)))
  assert (config.model.name, config.num_train_steps) == (f"mnist1d_{model}", 6000)
  assert config.loss.name == "cross_entropy" and config.loss.label_smoothing == 0.0


def test_grid_rejects_bad_baselines_and_controls():
  with pytest.raises(ValueError, match="own labels"):
    dataclasses.replace(GRID, baselines=dataclasses.replace(
        GRID.baselines, variants={"focal": {}}, published={}))
  with pytest.raises(ValueError, match="controls"):
    dataclasses.replace(GRID, controls={"focal": "cross_entropy"})


def _fake_run(dataset, loss, seed, acc, *, steps=50):
  cell = grid_lib.Cell(dataset, loss, seed)
  counts = [400, 239, 143, 86, 51, 30, 18, 11, 6, 4] if dataset != "standard" else [400] * 10
  name = "cross_entropy" if loss in GRID.baselines.variants else GRID.losses[loss]["loss.name"]
  reliability = {"count": [0] * 13 + [100, 900], "confidence": [None] * 13 + [0.9, 0.99],
                 "accuracy": [None] * 13 + [0.8, acc]}
  return {
      "run_id": cell.run_id, "grid": GRID.grids_of(cell), "dataset": dataset, "loss": loss,
      "loss_name": name, "hyper_parameters": {"name": name, "cyclical_factor": 4.0,
                                              "xi_granularity": "step"},
      "seed": seed, "num_epochs": 60, "test_accuracy": acc, "balanced_accuracy": acc,
      "many_shot_accuracy": acc, "medium_shot_accuracy": acc,
      "few_shot_accuracy": None if dataset == "standard" else acc / 2,
      "per_class_accuracy": [acc] * 10, "train_class_counts": counts, "test_loss": 0.3,
      "expected_calibration_error": 1 - acc, "reliability": reliability, "train_steps": steps,
      "steps_per_epoch": 10, "wall_seconds": 2.0,
      "eval_curve": [{"step": 10 * e, "epoch": float(e), "test_accuracy": acc,
                      "few_shot_accuracy": None} for e in (1, 2, 3)],
      "overrides": _overrides(cell), "command": "python -m experiments.train"}


def _fake_results(seeds=range(4)):
  """cfl_hc3 beats CE by 5 points on long_tail_100 only; baselines reach 30 / 70 / 90 %."""
  rng = np.random.default_rng(0)
  runs = []
  for seed in seeds:
    for dataset in ("standard", "long_tail_100"):
      base = float(rng.uniform(0.6, 0.8))
      for loss in LOSSES:
        gain = 0.05 + 0.001 * seed if (loss, dataset) == ("cfl_hc3", "long_tail_100") else 0.0
        runs.append(_fake_run(dataset, loss, seed, base + gain + float(rng.normal(0, 0.002))))
    if seed < GRID.baselines.seeds:
      for model, acc in (("logistic", 0.30), ("mlp", 0.70), ("cnn", 0.90)):
        runs.append(_fake_run("standard", model, seed, acc + 0.01 * seed, steps=6000))
  return {"runs": runs, "seeds": list(seeds), "num_epochs": 60, "num_train_steps": 50}


def test_report_holm_verdicts_and_baseline_table(tmp_path):
  text = report.render(GRID, _fake_results(), [])
  # Family: 4 compared losses vs CE + 2 controls vs CE+LS, on two datasets.
  assert "Test-accuracy comparisons of the Holm family (12 over all datasets)" in text
  rows = [line for line in text.splitlines()
          if line.startswith("| `cfl_hc3` vs `cross_entropy` |")]
  assert len(rows) == 2 and rows[0].endswith("**tie** |") and rows[1].endswith("**win** |")
  assert "| `cfl_hc2_ls` vs `cross_entropy_ls` |" in text
  assert "`cfl_hc3` on long_tail_100 (+5." in text[text.index("With Holm's correction"):]
  table = text[text.index("## Published baselines on standard"):]
  assert "| `logistic` | 32.0 | 31.5 +- 1.3 | 30.0 - 33.0 | 4 | -0.5 |" in table
  assert "| `cnn` | 94.0 | 91.5 +- 1.3 | 90.0 - 93.0 | 4 | -2.5 |" in table
  assert "ECE %" in text and "6,000" in table and "batch 100, 50 steps" in text
  assert "**Shortened schedule:** every main-grid run trained 50 steps" in text
  paths = plots.make_plots(GRID, report.reportable(_fake_results()), str(tmp_path))
  assert str(tmp_path / "reliability.png") in paths
  assert (tmp_path / "reliability.png").stat().st_size > 1000


def test_pooled_reliability_weights_bins_by_count():
  runs = [_fake_run("standard", "focal", s, acc) for s, acc in ((0, 0.9), (1, 0.6))]
  runs[1]["reliability"]["count"] = [0] * 13 + [100, 300]
  count, conf, acc = plots._pooled_reliability(runs)  # pylint: disable=protected-access
  assert count[-1] == 1200 and np.isnan(conf[0])
  assert acc[-1] == pytest.approx((900 * 0.9 + 300 * 0.6) / 1200)


def test_shards_merge_in_grid_order_without_training(tmp_path):
  cells = GRID.cells("main", range(2))[:6]
  for k in range(2):
    shard = {"runs": [_fake_run(c.dataset, c.loss, c.seed, 0.5) for c in cells[k::2]]}
    path = tmp_path / "shards" / f"{k}_of_2"
    path.mkdir(parents=True)
    reporting.write_json(str(path / "results.json"), shard)
  results = run.run_study(GRID, cells, out=str(tmp_path), num_epochs=60, eval_every_epochs=5,
                          num_train_steps=50, workdir_root=str(tmp_path / "w"),
                          reproduce_root=str(tmp_path / "r"), progress=False)
  assert [r["run_id"] for r in results["runs"]] == [c.run_id for c in cells]
  assert [(s["shard"], s["runs"]) for s in results["shards"]] == [("0_of_2", 3), ("1_of_2", 3)]
  assert not (tmp_path / "w").exists()  # nothing was trained


ONE_DEVICE = {"XLA_FLAGS": ""}  # batch 100 does not split over the tests' eight CPU devices
RESULTS = os.path.join(provenance.REPO, "experiments", "results", "mnist1d", "results.json")


def test_tiny_cell_runs_through_the_study_command_with_calibration(tmp_path, compilation_cache):
  subprocess.run(
      [sys.executable, "-m", "experiments.study", "--study=mnist1d",
       "--only=long_tail_50/cfl_hc2_ls/2", "--num_train_steps=8", "--eval_every_epochs=0",
       f"--out={tmp_path / 'out'}", f"--workdir_root={tmp_path / 'study'}",
       f"--reproduce_root={tmp_path / 'reproduce'}",
       f"--compilation_cache_dir={compilation_cache['JAX_COMPILATION_CACHE_DIR']}"],
      cwd=provenance.REPO, check=True, capture_output=True, timeout=180,
      env={**os.environ, **ONE_DEVICE})
  (entry,) = run.load_results(str(tmp_path / "out" / "results.json"))["runs"]
  assert list(entry) == list(run.RUN_KEYS) and entry["train_steps"] == 8
  assert entry["train_class_counts"][0] == 400 and entry["grid"] == ["main"]
  assert 0 < entry["expected_calibration_error"] < 1
  assert sum(entry["reliability"]["count"]) == 1000
  assert "--config.num_train_steps=8" in entry["command"]


def test_recorded_runs_are_the_grid_today():
  """results.json holds every cell of the study, each with the overrides the grid builds now."""
  results = run.load_results(RESULTS)
  cells = GRID.cells(results["grid"], results["seeds"])
  assert [r["run_id"] for r in results["runs"]] == [c.run_id for c in cells]
  for entry, cell in zip(results["runs"], cells):
    assert entry["overrides"] == GRID.overrides(
        cell, num_epochs=results["num_epochs"], eval_every_epochs=results["eval_every_epochs"],
        num_train_steps=results["num_train_steps"]), cell
    assert entry["expected_calibration_error"] is not None


def test_spot_check_a_recorded_run_reproduces(compilation_cache):
  """One recorded 3,000-step run, rerun from its printed command in a new process."""
  entry = next(r for r in run.load_results(RESULTS)["runs"]
               if r["run_id"] == "long_tail_100/cross_entropy/0")
  check = run.reproduce(entry, root="runs/reproduce_mnist1d", timeout=180,
                        extra_env={**compilation_cache, **ONE_DEVICE})
  assert abs(check["difference_pp"]) <= 0.5
  assert check["reproduced_test_loss"] == pytest.approx(entry["test_loss"], rel=1e-3)
