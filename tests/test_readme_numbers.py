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
