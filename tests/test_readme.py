"""README.md tells the truth: its Python example runs, its test command is what CI runs."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_has_python_examples():
  assert len(PYTHON_EXAMPLES) >= 2, "README.md lost its softmax or multi-label example"
  assert any("nnx.Optimizer" in code and "nnx.jit" in code for code in PYTHON_EXAMPLES), (
      "README.md lost its Flax NNX example")


@pytest.mark.parametrize("index", range(len(PYTHON_EXAMPLES)))
def test_python_example_runs_and_trains(index):
  code = PYTHON_EXAMPLES[index] + "\nassert float(loss) < 1.0, float(loss)\n"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]


def test_ci_runs_the_readme_test_command():
  commands = re.findall(r"^python -m pytest.*$", README, re.M)
  assert len(commands) == 1, commands
  ci = (ROOT / ".ci" / "run").read_text()
  assert "grep -m1 '^python -m pytest' README.md" in ci
  assert 'eval "$test_command"' in ci
