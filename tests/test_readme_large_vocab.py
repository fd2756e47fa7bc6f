"""README's "Large vocabularies" table is the stored benchmark record."""

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Large vocabularies"):]
SECTION = SECTION[:SECTION.index("\n## ", 1)]
RECORD = json.loads((ROOT / "benchmarks" / "records" / "large_vocab_cpu.json").read_text())


def test_table_is_the_benchmark_record():
  rows = [line for line in SECTION.splitlines() if line.startswith("| ")][1:]  # minus the header
  expected = [f"| {row['loss']} | {row['temp_mib']:,.0f} MiB | {row['ms'] / 1e3:.2f} s | "
              f"{row['x_ce']:.2f}x |" for row in RECORD["rows"]]
  assert rows == expected
  args = RECORD["args"]
  command = (f"python benchmarks/large_vocab_benchmark.py --rounds {args['rounds']} "
             "--record benchmarks/records/large_vocab_cpu.json")
  assert command in SECTION
  assert (f"N = {args['batch']:,}, D = {args['dim']}, V = {args['vocab']:,}, "
          f"{args['dtype']}") in SECTION
