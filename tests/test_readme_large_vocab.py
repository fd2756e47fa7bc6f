"""README's "Large vocabularies" section: the example runs, the table is the stored record."""

import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Large vocabularies"):]
SECTION = SECTION[:SECTION.index("\n## ", 1)]
RECORD = json.loads((ROOT / "benchmarks" / "records" / "large_vocab_cpu.json").read_text())


def test_example_runs_and_matches_the_dense_loss():
  (code,) = re.findall(r"```python\n(.*?)```", SECTION, re.S)
  code += "\nassert loss.shape == (2, 6) and float(loss[1, 4:].sum()) == 0.0, loss\n"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]


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
