"""Tests of experiments/study/: statistics, grid, commands, results schema, report, rerun."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import uuid

from etils import epath
import numpy as np
import pytest
from scipy import stats as scipy_stats

from cfl_jax import store
from cfl_jax.training import reporting
from experiments.study import digits
from experiments.study import grid as grid_lib
from experiments.study import provenance
from experiments.study import report
from experiments.study import run
from experiments.study import stats

GRID = digits.GRID


def test_paired_t_interval_by_hand():
  a = [0.90, 0.92, 0.91, 0.95, 0.93]
  b = [0.89, 0.90, 0.92, 0.91, 0.90]
  d = np.array(a) - np.array(b)  # 0.01, 0.02, -0.01, 0.04, 0.03
  mean = d.sum() / 5
  sd = math.sqrt(((d - mean) ** 2).sum() / 4)
  half = 2.7764451051977987 * sd / math.sqrt(5)  # t_{0.975, 4}
  out = stats.paired_t_interval(a, b)
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
  out = stats.paired_t_interval(a, b)
  test = scipy_stats.ttest_rel(a, b)
  low, high = test.confidence_interval(0.95)
  assert (out["low"], out["high"]) == (pytest.approx(low), pytest.approx(high))
  assert (stats.verdict(out) != "tie") == (test.pvalue < 0.05)
  assert out["p"] == pytest.approx(test.pvalue)


def test_verdict_and_degenerate_inputs():
  assert stats.verdict({"low": 0.1, "high": 0.2}) == "win"
  assert stats.verdict({"low": -0.2, "high": -0.1}) == "loss"
  assert stats.verdict({"low": -0.1, "high": 0.2}) == "tie"
  assert math.isnan(stats.paired_t_interval([1.0], [0.5])["low"])
  with pytest.raises(ValueError, match="paired"):
    stats.paired_t_interval([1.0, 2.0], [1.0])


def test_p_value_of_constant_differences():
  assert stats.paired_t_interval([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])["p"] == 0.0
  assert stats.paired_t_interval([1.0, 2.0], [1.0, 2.0])["p"] == 1.0


def test_holm_by_hand():
  # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone).
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
  assert stats.holm([]) == []


@pytest.mark.parametrize("seed", range(5))
def test_holm_rejects_as_the_step_down_procedure(seed):
  """Adjusted p <= alpha iff Holm's procedure rejects: walking up the sorted p-values, every
  p-value up to and including this one is <= alpha / (number of hypotheses not yet rejected)."""
  rng = np.random.default_rng(seed)
  p = rng.uniform(0, 0.08, 8).tolist()
  adjusted = stats.holm(p)
  ordered = sorted(p)
  for alpha in (0.01, 0.05, 0.1):
    for i, value in enumerate(p):
      rejected = all(q <= alpha / (len(p) - k) for k, q in enumerate(ordered) if q <= value)
      assert (adjusted[i] <= alpha) == rejected, (p, alpha, i)
    assert all(a >= value for a, value in zip(adjusted, p))


def test_grid_is_paired_and_deduplicated():
  main = GRID.cells("main", range(5))
  assert len(main) == 5 * len(GRID.datasets) * len(GRID.losses)
  every = GRID.cells("all", range(5))
  # The ablation adds f in {1, 2, 4} x {step, epoch} minus f=4/step (the main grid's cfl_hc2).
  assert len(every) == len(main) + 5 * 5
  assert len({c.run_id for c in every}) == len(every)
  per_seed = [{(c.dataset, c.loss) for c in every if c.seed == s} for s in range(5)]
  assert all(cells == per_seed[0] for cells in per_seed)
  assert GRID.parse_only("long_tail_50/focal/3") == grid_lib.Cell("long_tail_50", "focal", 3)


def test_digits_grid_is_well_formed():
  assert GRID.baseline in GRID.losses and set(GRID.compared) <= set(GRID.losses)
  assert set(GRID.versus) <= set(GRID.losses) and GRID.baseline not in GRID.versus
  assert all(key.startswith("dataset.") for o in GRID.datasets.values() for key in o)
  assert all(key.startswith("loss.") for o in GRID.all_losses.values() for key in o)
  # Main and ablation losses are separate definitions; the one name they share means one run.
  assert set(GRID.losses) & set(GRID.ablation_losses) == {"cfl_hc2"}
  assert GRID.ablation.losses["cfl_hc2"] == GRID.losses["cfl_hc2"]
  assert len(GRID.losses) == 6 and len(GRID.ablation_losses) == 6
  factors = {o["loss.cyclical_factor"] for o in GRID.ablation.losses.values()}
  assert factors == {1.0, 2.0, 4.0}
  assert GRID.grids_of(grid_lib.Cell("long_tail_10", "cfl_hc2", 0)) == ["main", "ablation"]
  assert GRID.grids_of(grid_lib.Cell("balanced", "cfl_hc2_f1_step", 0)) == []


def test_grid_rejects_inconsistent_definitions():
  with pytest.raises(ValueError, match="not one of its losses"):
    dataclasses.replace(GRID, baseline="hinge")
  clash = dataclasses.replace(GRID.ablation, losses={"cfl_hc2": {"loss.gamma_hc": 3.0}})
  with pytest.raises(ValueError, match="differs from the main grid"):
    dataclasses.replace(GRID, ablation=clash)
  with pytest.raises(ValueError, match="Unknown loss"):
    GRID.parse_only("balanced/hinge/0")
  with pytest.raises(ValueError, match="DATASET/LOSS/SEED"):
    GRID.parse_only("balanced/focal")


def test_cells_override_only_what_defines_them():
  overrides = GRID.overrides(grid_lib.Cell("long_tail_50", "focal", 3), num_epochs=7,
                             eval_every_epochs=1)
  recipe_keys = {key for key in overrides if key.split(".")[0] in ("optimizer", "model")}
  assert not recipe_keys and "batch_size" not in overrides
  assert overrides["name"] == "digits_long_tail_50_focal_s3" and overrides["seed"] == 3


def test_recorded_runs_still_build_their_configs():
  """Each (dataset, loss) of results.json: its recorded overrides (which restated the recipe) and
  its printed command give the config the grid builds today."""
  path = os.path.join(provenance.REPO, "experiments", "results", "digits", "results.json")
  recorded = {(r["dataset"], r["loss"]): r for r in run.load_results(path)["runs"]
              if r["seed"] == 0}
  assert len(recorded) == len(GRID.cells("all", [0]))
  for (dataset, loss), entry in recorded.items():
    today = GRID.overrides(grid_lib.Cell(dataset, loss, 0), num_epochs=entry["num_epochs"],
                           eval_every_epochs=2)
    expected = provenance.resolved_dict(provenance.build_config(GRID.config_file, today))
    assert provenance.resolved_dict(
        provenance.build_config(GRID.config_file, entry["overrides"])) == expected, entry["run_id"]
    _, argv = provenance.split_command(entry["command"])
    assert provenance.resolved_dict(provenance.parse_runner_config(argv)) == expected


def test_every_printed_command_builds_the_same_config():
  """The runner's flag parsing of each command gives exactly the study's resolved config."""
  for cell in GRID.cells("all", [0]):
    overrides = GRID.overrides(cell, num_epochs=60, eval_every_epochs=2)
    argv = provenance.reproduce_argv(GRID.config_file, overrides, "/tmp/x", ["--cpu_devices=1"])
    parsed = provenance.resolved_dict(provenance.parse_runner_config(argv))
    assert parsed == provenance.resolved_dict(
        provenance.build_config(GRID.config_file, overrides)), cell


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
    losses = (*GRID.losses, *(GRID.ablation_losses if dataset == "long_tail_10" else ()))
    for loss in dict.fromkeys(losses):
      for seed in seeds:
        acc = float(rng.uniform(0.8, 0.95))
        per_class = rng.uniform(0.5, 1.0, 10).tolist()
        hp = {"name": "cyclical_focal" if loss.startswith("cfl") else loss,
              "cyclical_factor": 4.0, "xi_granularity": "step"}
        runs.append({
            "run_id": f"{dataset}/{loss}/{seed}", "dataset": dataset, "loss": loss,
            "grid": GRID.grids_of(grid_lib.Cell(dataset, loss, seed)),
            "loss_name": hp["name"], "hyper_parameters": hp, "seed": seed, "num_epochs": 4,
            "test_accuracy": acc, "balanced_accuracy": acc, "many_shot_accuracy": acc,
            "medium_shot_accuracy": acc, "few_shot_accuracy": None if dataset == "balanced"
            else float(rng.uniform(0.3, 0.7)), "per_class_accuracy": per_class,
            "train_class_counts": counts, "test_loss": 0.3, "train_steps": 28,
            "overrides": GRID.overrides(grid_lib.Cell(dataset, loss, seed), num_epochs=4,
                                        eval_every_epochs=1),
            "steps_per_epoch": 7, "wall_seconds": 2.0,
            "eval_curve": [{"step": 7 * e, "epoch": float(e), "test_accuracy": acc * e / 4,
                            "few_shot_accuracy": None} for e in range(1, 5)]})
  return {"runs": runs, "seeds": list(seeds), "num_epochs": 4}


def test_report_from_results(tmp_path):
  text = report.write_report(GRID, _fake_results(), str(tmp_path))
  assert "## balanced" in text and "## long_tail_10" in text and "## Ablation" in text
  assert "diff vs CE" in text and "In one sentence" in text
  for name in ("xi_schedule.png", "test_accuracy_curves.png", "per_class_accuracy_vs_count.png"):
    assert (tmp_path / name).stat().st_size > 1000
  assert (tmp_path / "REPORT.md").read_text() == text


def test_a_study_in_a_bucket_reads_and_writes_everything_there(gcs_bucket, tmp_path):
  """Shards, a trained cell's workdir, results.json, REPORT.md and plots on ``gs://``; the report
  and plots are those of a local directory."""
  bucket = epath.Path(gcs_bucket) / uuid.uuid4().hex[:8]
  out = bucket / "study"
  fake = _fake_results()
  for k in range(2):
    reporting.write_json(out / "shards" / f"{k}_of_2" / "results.json",
                         {"runs": fake["runs"][k::2]})
  cell = grid_lib.Cell("long_tail_10", "cross_entropy", 3)  # a seed the report leaves out
  results = run.run_study(
      GRID, [cell], out=out, num_epochs=1, eval_every_epochs=1, workdir_root=bucket / "runs",
      reproduce_root=os.fspath(bucket / "reproduce"), progress=False,
      metadata={"seeds": fake["seeds"], "num_epochs": fake["num_epochs"]})
  assert [s["shard"] for s in results["shards"]] == ["0_of_2", "1_of_2"]
  entry = results["runs"][0]
  assert entry["run_id"] == cell.run_id and len(entry["eval_curve"]) == 1
  assert entry["command"].endswith(f" --workdir={bucket}/reproduce/{cell.run_id}")
  workdir = bucket / "runs" / cell.run_id
  assert (workdir / "summary.json").exists() and not (workdir / "checkpoints").exists()
  assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))

  text = report.write_report(GRID, run.load_results(out / "results.json"), out)
  assert (out / "REPORT.md").read_text() == text
  assert text == report.write_report(GRID, results, tmp_path)
  plots = {name for name in store.relative_files(out) if name.endswith(".png")}
  assert plots == {p.name for p in tmp_path.glob("*.png")} and "xi_schedule.png" in plots
  for name in plots:
    assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_report_takes_the_recipe_from_the_config(tmp_path):
  results = _fake_results()
  text = report.render(GRID, results, [])
  assert "lr 0.1 cosine" in text and "batch 64, 4 epochs" in text
  assert "The test set has 500 images of 10 classes" in text
  config_file = tmp_path / "changed.py"
  config_file.write_text(
      "from cfl_jax.training import default_config\n"
      "def get_config():\n"
      "  config = default_config()\n"
      "  config.batch_size = 32\n"
      "  config.optimizer.update(learning_rate=0.05, lr_schedule='constant', warmup_epochs=1.0)\n"
      "  config.few_shot_max = 10\n"
      "  return config\n")
  changed = report.render(dataclasses.replace(GRID, config_file=str(config_file)), results, [])
  assert "lr 0.05 constant after 1 warm-up epochs from 0" in changed
  assert "batch 32, 4 epochs" in changed and "lr 0.1" not in changed
  assert "Few-shot classes (<= 10 training images)" in changed
  with pytest.raises(ValueError, match="no runs"):
    report.render(GRID, {"runs": []}, [])


def test_report_shows_the_best_epoch_where_the_runs_recorded_it():
  results = _fake_results()
  assert "best-epoch" not in report.render(GRID, results, [])  # runs recorded before it
  for r in results["runs"]:
    r.update(best_test_accuracy=r["test_accuracy"] + 0.01, best_epoch=3.0)
  text = report.render(GRID, results, [])
  assert "| best-epoch acc % | best-epoch diff vs CE, pp [95% CI] |" in text
  assert "(`best_test_accuracy`, the number timm and LDAM report)" in text


def test_recorded_results_without_the_best_metrics_still_report():
  results = run.load_results(os.path.join(provenance.REPO, "experiments", "results", "digits",
                                          "results.json"))
  assert not any("best_test_accuracy" in r for r in results["runs"])
  text = report.render(GRID, results, [])
  assert "## long_tail_10" in text and "best-epoch" not in text


def test_report_applies_holm_to_the_compared_family():
  results = _fake_results(seeds=range(4))
  for r in results["runs"]:  # cfl_hc3 beats cross-entropy by a clear, seed-varying margin
    if r["loss"] == "cfl_hc3":
      base = next(b for b in results["runs"] if b["loss"] == "cross_entropy"
                  and b["dataset"] == r["dataset"] and b["seed"] == r["seed"])
      r["test_accuracy"] = base["test_accuracy"] + 0.05 + 0.001 * r["seed"]
  text = report.render(GRID, results, [])
  family = len(GRID.compared) * 2  # two datasets
  holm = text[text.index("With Holm's correction"):].split("\n")[0]
  assert holm.startswith(f"With Holm's correction over these {family} comparisons")
  assert "`cfl_hc3` on balanced (+5.15 pp" in holm and "`cfl_hc3` on long_tail_10" in holm
  assert f"{holm.count('adjusted p')} differences remain significant" in holm


def test_unknown_study_is_a_usage_error():
  result = subprocess.run([sys.executable, "-m", "experiments.study", "--study=nope",
                           "--report_only"], capture_output=True, text=True, timeout=120,
                          cwd=provenance.REPO)
  assert result.returncode != 0
  assert "experiments/study/nope.py defines no GRID" in result.stderr


def test_spot_check_schema_and_command_reproduces(tmp_path, compilation_cache):
  """One tiny cell in-process, its results.json entry, then its printed command in a new process."""
  cell = grid_lib.Cell("long_tail_10", "cfl_reference", 1)
  results = run.run_study(
      GRID, [cell], out=str(tmp_path / "out"), num_epochs=3, eval_every_epochs=1,
      workdir_root=str(tmp_path / "study"), reproduce_root=str(tmp_path / "reproduce"),
      progress=False)
  with open(tmp_path / "out" / "results.json") as f:
    assert json.load(f) == json.loads(json.dumps(results))
  (entry,) = results["runs"]
  assert set(run.RUN_KEYS) <= set(entry)
  assert list(entry) == list(run.RUN_KEYS)
  assert entry["run_id"] == "long_tail_10/cfl_reference/1" and entry["grid"] == ["main"]
  assert entry["hyper_parameters"]["gamma_neg"] == 2.0
  assert entry["hyper_parameters"]["label_smoothing"] == 0.1
  assert entry["train_steps"] == 3 * 7 and len(entry["eval_curve"]) == 3
  curve = [e["test_accuracy"] for e in entry["eval_curve"]]
  assert entry["best_test_accuracy"] == max(curve)
  assert entry["best_epoch"] == entry["eval_curve"][curve.index(max(curve))]["epoch"]
  assert len(entry["per_class_accuracy"]) == 10 and 0 <= entry["test_accuracy"] <= 1
  assert entry["train_class_counts"] == [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]
  assert entry["command"].startswith("JAX_PLATFORMS=cpu ")
  assert "python -m experiments.train --config=experiments/configs/digits.py" in entry["command"]

  check = run.reproduce(entry, root=str(tmp_path / "reproduce"), timeout=120,
                        extra_env=compilation_cache)
  assert abs(check["difference_pp"]) <= 0.5
  assert check["reproduced_test_loss"] == pytest.approx(entry["test_loss"], rel=1e-5)
  assert os.path.exists(tmp_path / "reproduce" / "long_tail_10" / "cfl_reference" / "1" /
                        "summary.json")
