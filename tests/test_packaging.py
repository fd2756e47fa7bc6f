"""The core install: ``import cfl_jax`` needs only jax, optax and numpy; the training stack is an
extra whose absence is named."""

import os
import re
import subprocess
import sys
import tomllib

import yaml  # PyYAML comes with the train extra (flax, orbax, ml_collections)

import cfl_jax
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


def _project():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def test_the_core_computes_the_loss_and_names_the_train_extra():
  result = subprocess.run([sys.executable, "-c", _CORE_ONLY], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": REPO}, check=True)
  lines = result.stdout.splitlines()
  assert lines[0].startswith("loss ") and float(lines[0].split()[1]) > 0
  for name, line in zip(("training", "models"), lines[1:3]):
    assert line.startswith(f"cfl_jax.{name} needs flax") and "pip install -e '.[train]'" in line
  assert lines[3] == "loaded []"


def test_the_declared_core_is_jax_optax_and_numpy():
  project = _project()
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
            if re.search(r"\bSPEC\b", f.read()):  # not ASPECT_RATIO or _TENSORSTORE_SPEC
              citing.append(os.path.relpath(os.path.join(root, name), REPO))
  assert not citing, f"cite docs/method.md, not a SPEC outside the repository: {citing}"
  assert os.path.isfile(os.path.join(REPO, "docs", "method.md"))


def test_the_project_urls_are_addresses_the_project_owns():
  # No repository URL until the repository is public (issue 33): the paper is the only address.
  urls = _project()["urls"]
  assert urls == {"Paper": "https://arxiv.org/abs/2202.08978"}, urls


def test_citation_cff_cites_this_version_and_the_paper():
  with open(os.path.join(REPO, "CITATION.cff"), encoding="utf-8") as f:
    cff = yaml.safe_load(f)
  assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
  assert cff["message"] and cff["title"] and cff["authors"]
  assert cff["version"] == cfl_jax.__version__, "a release bumps CITATION.cff's version too"
  assert cff["license"] == _project()["license"]
  assert cff.get("repository-code") == _project()["urls"].get("Repository")
  assert cff.get("url") == _project()["urls"].get("Homepage")
  paper = cff["preferred-citation"]
  assert paper["title"] == "Cyclical Focal Loss" and paper["year"] == 2022
  assert paper["authors"] == [{"family-names": "Smith", "given-names": "Leslie N."}]
  assert paper["url"] == "https://arxiv.org/abs/2202.08978"
  assert paper["doi"] == "10.48550/arXiv.2202.08978"


def test_the_changelog_has_a_section_for_this_version():
  with open(os.path.join(REPO, "CHANGELOG.md"), encoding="utf-8") as f:
    versions = re.findall(r"^## \[([^\]]+)\]", f.read(), re.M)
  assert versions and versions[0] == cfl_jax.__version__, versions
