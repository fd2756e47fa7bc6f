"""The install instructions match what exists: the extras table of docs/installation.md lists the
extras and packages pyproject.toml declares, and no page, metadata or message tells users to
install a release that does not exist or names an address the project does not own."""

import pathlib
import re
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
INSTALLATION = ROOT / "docs" / "installation.md"

# Text that users read: pages, metadata, citation, and the code's messages and docstrings.
_READ_BY_USERS = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md", "CITATION.cff", "pyproject.toml",
                  "docs/**/*.md", "docs/**/*.rst", "docs/**/*.py", "cfl_jax/**/*.py",
                  "experiments/**/*.py", "benchmarks/**/*.py"]
# `pip install cfl-jax`, `pip install 'cfl-jax[train]'`, `pip install -U "cfl-jax[...]"`: a
# release from an index, which does not exist before the first release.
_RELEASE_INSTALL = re.compile(r"""pip install (?:-U |--upgrade )?['"]?cfl[-_]jax\b""")
# Addresses nobody has shown the project to own (issue 33); the repository URL is added once it
# exists.
_UNOWNED = re.compile(r"github\.com/cfl-jax", re.I)


def _requirement_name(requirement: str) -> str:
  return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].strip()


def declared_extras(pyproject: str) -> dict[str, tuple[set[str], set[str]]]:
  """extra -> (package names it brings, extras of cfl-jax it includes)."""
  extras = tomllib.loads(pyproject)["project"]["optional-dependencies"]
  declared = {}
  for extra, requirements in extras.items():
    own = [r for r in requirements if _requirement_name(r) == "cfl-jax"]
    included = {name for r in own for name in re.findall(r"\[(.*?)\]", r)[0].split(",")}
    declared[extra] = ({_requirement_name(r) for r in requirements if r not in own}, included)
  return declared


def documented_extras(page: str) -> dict[str, tuple[set[str], set[str]]]:
  """The extras table (| extra | for | brings |): extra -> (code spans in brings, included)."""
  rows = re.findall(r"^\| `([\w-]+)` \| (.*?) \| (.*?) \|$", page, re.M)
  assert rows, "docs/installation.md lost its extras table"
  documented = {}
  for extra, purpose, brings in rows:
    included = set(re.findall(r"includes `([\w-]+)`", purpose))
    # `etils` with `epath`: the bracketed extra of a package is not a package of its own.
    brings = re.sub(r"with `(\w+)` \(", "(", brings)
    documented[extra] = (set(re.findall(r"`([\w.-]+)`", brings)), included)
  return documented


def test_the_extras_table_lists_what_pyproject_declares():
  declared = declared_extras((ROOT / "pyproject.toml").read_text())
  documented = documented_extras(INSTALLATION.read_text())
  assert sorted(documented) == sorted(declared)
  for extra, (packages, included) in declared.items():
    shown, shown_included = documented[extra]
    assert shown == packages, (
        f"docs/installation.md, extra {extra!r}: lists {sorted(shown - packages)} that pyproject "
        f"does not declare and leaves out {sorted(packages - shown)}")
    assert shown_included == included, (extra, shown_included, included)


def test_a_table_out_of_step_is_caught():
  pyproject = '[project]\noptional-dependencies = {a = ["x>=1", "y[z]; python_version>\'3\'"], ' \
              'b = ["cfl-jax[a]", "w"]}\n'
  assert declared_extras(pyproject) == {"a": ({"x", "y"}, set()), "b": ({"w"}, {"a"})}
  page = "| `a` | for | `x` |\n| `b` | more; includes `a` | `w`, `v` |\n"
  assert documented_extras(page) == {"a": ({"x"}, set()), "b": ({"w", "v"}, {"a"})}


def _user_facing_files() -> list[pathlib.Path]:
  files = {path for pattern in _READ_BY_USERS for path in ROOT.glob(pattern)}
  return sorted(path for path in files if "_build" not in path.parts)


@pytest.mark.parametrize("pattern", [_RELEASE_INSTALL, _UNOWNED], ids=["release", "url"])
def test_no_page_points_at_a_release_or_address_that_does_not_exist(pattern):
  found = [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}: "
           f"{match.group(0)}"
           for path in _user_facing_files()
           for text in [path.read_text(encoding="utf-8")]
           for match in pattern.finditer(text)]
  assert not found, found


def test_the_patterns_catch_what_they_are_for():
  assert _RELEASE_INSTALL.search("run: pip install 'cfl-jax[train]'")
  assert _RELEASE_INSTALL.search('pip install -U "cfl-jax[experiments]"')
  assert _RELEASE_INSTALL.search("pip install cfl-jax")
  assert not _RELEASE_INSTALL.search("pip install -e '.[train]'")
  assert _UNOWNED.search("url: https://github.com/cfl-jax/cfl-jax")


def _bibtex(path: pathlib.Path) -> list[str]:
  return re.findall(r"```(?:bibtex)?\n(@.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_the_citations_agree_with_citation_cff():
  import yaml  # PyYAML comes with the train extra

  cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
  readme, = _bibtex(ROOT / "README.md")
  page, = _bibtex(ROOT / "docs" / "citation.md")
  landing, = _bibtex(ROOT / "docs" / "index.md")
  assert readme == page, "README.md and docs/citation.md cite differently"
  assert page.startswith(landing), "the landing page's citation is not the paper's entry"
  assert f"title   = {{{cff['title']}}}" in page and f"version = {{{cff['version']}}}" in page
  paper = cff["preferred-citation"]
  assert f"title   = {{{paper['title']}}}" in landing and str(paper["year"]) in landing
