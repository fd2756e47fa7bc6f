"""The core install: ``import cfl_jax`` needs only jax, optax and numpy; the training stack is an
extra whose absence is named."""

import os
import subprocess
import sys
import tomllib

from training_helpers import REPO

# (absl-py and chex come with optax itself.)
_TRAINING_STACK = ("flax", "orbax", "tensorstore", "tensorflow", "tensorboardX", "ml_collections",
                   "tqdm", "safetensors", "etils")

# Run in a fresh interpreter in which none of the training stack can be imported, as after
# `pip install cfl-jax`.
_CORE_ONLY = f"""
import importlib.abc, sys
class Uninstalled(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in {_TRAINING_STACK!r}:
      raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Uninstalled())

import jax.numpy as jnp
import cfl_jax
loss = cfl_jax.cyclical_focal_loss_with_integer_labels(
    jnp.array([[2.0, 0.5, -1.0]]), jnp.array([0]), xi=cfl_jax.xi_schedule(100)(10))
print("loss", float(loss[0]))
for name in ("training", "models"):
  try:
    __import__(f"cfl_jax.{{name}}")
  except ImportError as error:
    print(error)
print("loaded", sorted(m for m in sys.modules if m.split('.')[0] in {_TRAINING_STACK!r}))
"""


def test_the_core_computes_the_loss_and_names_the_train_extra():
  result = subprocess.run([sys.executable, "-c", _CORE_ONLY], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": REPO}, check=True)
  lines = result.stdout.splitlines()
  assert lines[0].startswith("loss ") and float(lines[0].split()[1]) > 0
  for name, line in zip(("training", "models"), lines[1:3]):
    assert line.startswith(f"cfl_jax.{name} needs flax") and "pip install 'cfl-jax[train]'" in line
  assert lines[3] == "loaded []"


def test_the_declared_core_is_jax_optax_and_numpy():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  names = lambda requirements: {r.split(">")[0].split("[")[0].split(";")[0].strip()
                                for r in requirements}
  assert names(project["dependencies"]) == {"jax", "optax", "numpy"}
  extras = project["optional-dependencies"]
  assert {"flax", "orbax-checkpoint", "tensorboardX", "safetensors"} <= names(extras["train"])
  for extra in ("experiments", "test"):
    assert "cfl-jax[train]" in extras[extra]
  assert project["license"] == "Apache-2.0" and project["dynamic"] == ["version"]
  assert os.path.isfile(os.path.join(REPO, "LICENSE"))
  assert os.path.isfile(os.path.join(REPO, "cfl_jax", "py.typed"))


def test_code_cites_the_method_page_in_the_repository():
  citing = []
  for folder in ("cfl_jax", "experiments", "tests", "benchmarks", "docs"):
    for root, _, names in os.walk(os.path.join(REPO, folder)):
      for name in names:
        if name.endswith((".py", ".md")) and name != os.path.basename(__file__):
          with open(os.path.join(root, name), encoding="utf-8") as f:
            if "SPEC" in f.read():
              citing.append(os.path.relpath(os.path.join(root, name), REPO))
  assert not citing, f"cite docs/method.md, not a SPEC outside the repository: {citing}"
  assert os.path.isfile(os.path.join(REPO, "docs", "method.md"))
