"""README.md tells the truth: its Python example runs, its test command is what CI runs."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_example_runs_and_trains():
  blocks = re.findall(r"```python\n(.*?)```", README, re.S)
  assert blocks, "README.md has no python example"
  code = blocks[0] + "\nassert float(loss) < 1.0, float(loss)\n"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]


def test_ci_runs_the_readme_test_command():
  commands = re.findall(r"^python -m pytest.*$", README, re.M)
  assert len(commands) == 1, commands
  ci = (ROOT / ".ci" / "run").read_text()
  assert "grep -m1 '^python -m pytest' README.md" in ci
  assert 'eval "$test_command"' in ci
