"""Every number README.md reports comes from a stored record, and stays equal to it.

Benchmark tables follow ``<!-- record: PATH -->`` markers and must equal
``benchmarks/readme_tables.render`` of that record; the study results are checked against
``experiments/results/*/results.json`` through the study's own statistics.
"""

import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_tables  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAT = " ".join(README.split())  # prose wraps anywhere: compare with single spaces
MARKERS = re.findall(r"<!-- record: (\S+) -->\n((?:\|.*\|\n)+)", README)


def test_the_readme_shows_every_benchmark_record():
  shown = {path for path, _ in MARKERS}
  stored = {str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks" / "records").glob("*.json")}
  assert shown == stored


@pytest.mark.parametrize("path, table", MARKERS, ids=[path for path, _ in MARKERS])
def test_each_table_is_its_record(path, table):
  record = json.loads((ROOT / path).read_text())
  assert table.strip() == readme_tables.render(record)


def test_a_changed_record_no_longer_matches(tmp_path):
  path, table = MARKERS[0]
  record = json.loads((ROOT / path).read_text())
  record["rows"][0]["x_ce"] += 0.1
  assert table.strip() != readme_tables.render(record)


def _study(name):
  """(grid, reportable results) of a recorded study, as its report reads them."""
  from experiments.study import report  # pylint: disable=g-import-not-at-top
  from experiments.study.__main__ import load_grid  # pylint: disable=g-import-not-at-top
  results = json.loads((ROOT / "experiments" / "results" / name / "results.json").read_text())
  return load_grid(name), report.reportable(results)


def _counts(results, grid, losses, baseline):
  """(wins, ties, losses, comparisons) of ``losses`` against ``baseline`` over the grid's sets."""
  from experiments.study import report  # pylint: disable=g-import-not-at-top
  said = report.statements(results, list(grid.datasets), losses, baseline)
  return len(said["win"]), len(said["tie"]), len(said["loss"]), sum(map(len, said.values()))


def _holm_wins(results, grid, losses, against):
  """Comparisons of ``losses`` vs ``against`` that win after Holm's correction, with diffs."""
  from experiments.study import report  # pylint: disable=g-import-not-at-top
  family = report.holm_family(results, list(grid.datasets), grid)
  return family, [c["diff"]["mean"] for loss, versus, _, c, p in family
                  if loss in losses and versus == against and report.holm_verdict(c, p) == "win"]


def test_the_digits_result_is_results_json():
  from experiments.study import report  # pylint: disable=g-import-not-at-top
  grid, results = _study("digits")
  wins, _, losses, n = _counts(results, grid, grid.compared, "cross_entropy")
  diffs = [c["diff"]["mean"] for _, _, c in report.comparisons(
      results, list(grid.datasets), grid.compared, "cross_entropy") if c["verdict"] == "win"]
  assert (f"beat it in {wins} of {n} comparisons (+{100 * min(diffs):.1f} to "
          f"+{100 * max(diffs):.1f} points") in FLAT
  assert losses == 0 and "CFL never did worse than cross-entropy" in FLAT
  _, holm = _holm_wins(results, grid, grid.compared, "cross_entropy")
  assert not holm and "none survives Holm's correction" in FLAT
  wins, _, losses, n = _counts(results, grid, grid.compared, "cross_entropy_ls")
  assert f"({wins} wins, {losses} losses in {n})" in FLAT
  wins, _, losses, n = _counts(results, grid, grid.compared, "focal")
  assert f"plain focal loss ({wins} wins, {losses} losses in {n})" in FLAT
  assert f"{len(results['runs'])} runs, `python -m experiments.study --grid=all" in FLAT


def test_the_mnist1d_result_is_results_json():
  from experiments.study import stats  # pylint: disable=g-import-not-at-top
  grid, results = _study("mnist1d")
  baselines = [100 * stats.mean_std([r["test_accuracy"] for r in
                                     stats.runs_of(results, "standard", v).values()])[0]
               for v in ("logistic", "mlp", "cnn")]
  assert "reproduced at {:.1f} / {:.1f} / {:.1f} %".format(*baselines) in FLAT
  smoothed, plain = ("cfl_hc2_ls", "cfl_reference"), ("cfl_hc2", "cfl_hc3")
  family, wins = _holm_wins(results, grid, smoothed, "cross_entropy")
  per_loss = len(grid.datasets) * len(smoothed)
  assert f"after Holm's correction over {len(family)} comparisons" in FLAT
  assert (f"beat cross-entropy ({len(wins)} of {per_loss}, +{100 * min(wins):.1f} to "
          f"+{100 * max(wins):.1f} points") in FLAT
  _, plain_wins = _holm_wins(results, grid, plain, "cross_entropy")
  assert f"never did ({len(plain_wins)} of {len(grid.datasets) * len(plain)})" in FLAT
  _, against_ls = _holm_wins(results, grid, smoothed, "cross_entropy_ls")
  assert f"same smoothing ({len(against_ls)} of {per_loss})" in FLAT
  main_runs = [r for r in results["runs"] if "main" in r["grid"]]
  assert f"{len(main_runs)} runs, plus the" in FLAT
