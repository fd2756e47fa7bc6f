"""Every number README.md and the benchmarks guide report comes from a stored record, and stays
equal to it.

Benchmark tables follow ``<!-- record: PATH -->`` markers (in README.md or a page under
docs/guides/) and must equal ``benchmarks/readme_tables.render`` of that record; the study results
(in full in docs/guides/benchmarks.md, in three sentences in README.md) are checked against
``experiments/results/*/results.json`` through the study's own statistics.
"""

import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guides").glob("*.md"))]
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_tables  # pylint: disable=g-import-not-at-top,wrong-import-position


def _flat(path):
  """The page with single spaces: prose wraps anywhere."""
  return " ".join(path.read_text().split())


README = _flat(ROOT / "README.md")
BENCHMARKS = _flat(ROOT / "docs" / "guides" / "benchmarks.md")
MARKERS = [(str(page.relative_to(ROOT)), path, table) for page in PAGES
           for path, table in re.findall(r"<!-- record: (\S+) -->\n((?:\|.*\|\n)+)",
                                         page.read_text())]


def test_the_pages_show_every_benchmark_record_once():
  shown = [path for _, path, _ in MARKERS]
  stored = {str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks" / "records").glob("*.json")}
  assert sorted(shown) == sorted(stored)


@pytest.mark.parametrize("page, path, table", MARKERS, ids=[path for _, path, _ in MARKERS])
def test_each_table_is_its_record(page, path, table):
  record = json.loads((ROOT / path).read_text())
  assert table.strip() == readme_tables.render(record), f"{page}: {path}"


def test_a_changed_record_no_longer_matches(tmp_path):
  _, path, table = MARKERS[0]
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
          f"+{100 * max(diffs):.1f} points") in BENCHMARKS
  assert losses == 0 and "CFL never did worse than cross-entropy" in BENCHMARKS
  _, holm = _holm_wins(results, grid, grid.compared, "cross_entropy")
  assert not holm and "none survives Holm's correction" in BENCHMARKS
  assert "on digits no gain survives Holm's correction" in README
  wins, _, losses, n = _counts(results, grid, grid.compared, "cross_entropy_ls")
  assert f"({wins} wins, {losses} losses in {n})" in BENCHMARKS
  wins, _, losses, n = _counts(results, grid, grid.compared, "focal")
  assert f"plain focal loss ({wins} wins, {losses} losses in {n})" in BENCHMARKS
  runs = len(results["runs"])
  assert f"{runs} runs, `python -m experiments.study --grid=all" in BENCHMARKS
  assert f"scikit-learn's digits ({runs} runs)" in README


def test_the_mnist1d_result_is_results_json():
  from experiments.study import stats  # pylint: disable=g-import-not-at-top
  grid, results = _study("mnist1d")
  baselines = [100 * stats.mean_std([r["test_accuracy"] for r in
                                     stats.runs_of(results, "standard", v).values()])[0]
               for v in ("logistic", "mlp", "cnn")]
  assert "reproduced at {:.1f} / {:.1f} / {:.1f} %".format(*baselines) in BENCHMARKS
  smoothed, plain = ("cfl_hc2_ls", "cfl_reference"), ("cfl_hc2", "cfl_hc3")
  family, wins = _holm_wins(results, grid, smoothed, "cross_entropy")
  per_loss = len(grid.datasets) * len(smoothed)
  assert f"after Holm's correction over {len(family)} comparisons" in BENCHMARKS
  assert (f"beat cross-entropy ({len(wins)} of {per_loss}, +{100 * min(wins):.1f} to "
          f"+{100 * max(wins):.1f} points") in BENCHMARKS
  assert f"label-smoothed CFL beat cross-entropy ({len(wins)} of {per_loss})" in README
  _, plain_wins = _holm_wins(results, grid, plain, "cross_entropy")
  per_plain = len(grid.datasets) * len(plain)
  assert f"never did ({len(plain_wins)} of {per_plain})" in BENCHMARKS
  assert f"never beat it ({len(plain_wins)} of {per_plain})" in README
  _, against_ls = _holm_wins(results, grid, smoothed, "cross_entropy_ls")
  for page in (BENCHMARKS, README):
    assert f"same smoothing ({len(against_ls)} of {per_loss})" in page
  main_runs = [r for r in results["runs"] if "main" in r["grid"]]
  assert f"{len(main_runs)} runs, plus the" in BENCHMARKS
  assert f"MNIST-1D ({len(main_runs)} runs)" in README
