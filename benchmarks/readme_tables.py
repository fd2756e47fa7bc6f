"""The benchmark tables of the docs, rendered from the stored records in ``benchmarks/records/``.

Each table in docs/guides/benchmarks.md (or README.md) follows a marker line
``<!-- record: benchmarks/records/NAME.json -->``; ``tests/test_readme_numbers.py`` checks that
every table equals :func:`render` of its record, so the pages cannot drift from what was
measured. After rerunning a benchmark with ``--record``:

    python benchmarks/readme_tables.py benchmarks/records/loss_cpu.json   # paste under the marker
"""

from __future__ import annotations

import json
import pathlib
import sys


def _time(ms: float) -> str:
  return f"{ms / 1e3:.2f} s" if ms >= 1e3 else f"{ms:.2f} ms"


def render(record: dict) -> str:
  """The markdown table of ``record`` (as written by ``record.write_record``).

  Columns: the case (when the record has several), the loss (or the record's ``label``), the
  temporaries (when measured), the median time and the ratio to the record's baseline row of the
  same case.
  """
  rows = record["rows"]
  label = record.get("label", "loss")
  cases = len({row["case"] for row in rows}) > 1
  memory = all("temp_mib" in row for row in rows)
  header = [*(["case"] if cases else []), label, *(["temporaries"] if memory else []),
            "time", "x baseline"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [*([row["case"]] if cases else []), row[label],
             *([f"{row['temp_mib']:,.0f} MiB"] if memory else []), _time(row["ms"]),
             f"{row['x_ce']:.2f}x"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(paths: list[str]) -> None:
  for path in paths:
    print(f"<!-- record: {path} -->")
    print(render(json.loads(pathlib.Path(path).read_text())))
    print()


if __name__ == "__main__":
  main(sys.argv[1:])
