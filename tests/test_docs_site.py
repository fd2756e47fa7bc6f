"""The docs site reads at 1,400 px without a browser: code lines and table cells that would be cut
off are caught in the sources, and the link inventories of jax, optax and flax match the names
docs/_ext/inventories.py lists. (docs/_ext/measure_layout.py measures the built site in headless
Chromium; CI has no browser.)"""

import pathlib
import re
import sys
import zlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import inventories  # noqa: E402  (docs/_ext)

PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)
# A page's code block at 1,400 px is 830 px wide with 16 px padding each side (measured with
# docs/_ext/measure_layout.py); wide.css sets code at 0.8em, 7.7 px a character in Chromium's
# monospace font, so 100 characters (the project's line length) take 802 px and fit.
MAX_CODE_LINE = 100
# A table cell's code span wraps only at spaces: the studies table's commands, with runs of 70 to
# 100 characters without one, made it 1,198 px wide in an 848 px column. The longest run left (a
# signature in the large-vocabularies guide, 58 characters) measures within its column.
MAX_TABLE_CODE = 60


def code_lines(text: str) -> list[tuple[int, str]]:
  """(line number, line) of every line inside a fenced code block of a Markdown page."""
  lines, inside = [], None
  for number, line in enumerate(text.splitlines(), 1):
    fence = re.match(r"\s*(`{3,}|~{3,})", line)
    if fence and (inside is None or fence.group(1).startswith(inside)):
      inside = None if inside else fence.group(1)
    elif inside and not line.lstrip().startswith(":"):  # a directive's options are not code
      lines.append((number, line))
  return lines


def table_code_spans(text: str) -> list[tuple[int, str]]:
  """(line number, span) of the code spans in the rows of a Markdown table."""
  outside_code = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
  return [(number, span) for number, line in enumerate(outside_code.splitlines(), 1)
          if line.startswith("|") for span in re.findall(r"`([^`]+)`", line)]


def test_the_checks_find_what_they_look_for():
  page = "text `a`\n```bash\nshort\n```\n| a | `0123456789` |\n```{code-cell}\n:tags: [x]\ny\n```\n"
  assert code_lines(page) == [(3, "short"), (8, "y")]
  assert table_code_spans(page) == [(5, "0123456789")]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_code_line_or_table_is_cut_off(page):
  text = page.read_text(encoding="utf-8")
  long_lines = [f"{number}: {len(line)} characters" for number, line in code_lines(text)
                if len(line) > MAX_CODE_LINE]
  assert not long_lines, (
      f"{page.name}: code lines wider than the column at 1,400 px (wrap them): {long_lines}")
  wide = [f"{number}: {span}" for number, span in table_code_spans(text)
          if max(map(len, span.split())) > MAX_TABLE_CODE]
  assert not wide, f"{page.name}: a table cell's code widens the table past the column: {wide}"


def _read_inventory(path: pathlib.Path) -> tuple[str, dict[str, tuple[str, str]]]:
  """(project, {name: (role, uri)}) of a Sphinx objects.inv (version 2, zlib-compressed)."""
  header, _, body = path.read_bytes().partition(b"zlib.\n")
  project = re.search(rb"^# Project: (.*)$", header, re.M).group(1).decode()
  entries = {}
  for line in zlib.decompress(body).decode().splitlines():
    name, domain_role, _, uri, _ = line.split(" ", 4)
    entries[name] = (domain_role.removeprefix("py:"), uri.replace("$", name))
  return project, entries


@pytest.mark.parametrize("project", sorted(inventories.INVENTORIES))
def test_the_inventory_files_list_the_cited_names(project):
  _, names = inventories.INVENTORIES[project]
  found_project, entries = _read_inventory(inventories.path(project))
  assert found_project == project
  assert entries == names, (
      f"docs/_inventories/{project}.inv is out of step with docs/_ext/inventories.py: "
      "run python docs/_ext/inventories.py")
  missing = [name for name in names if inventories.resolve(name) is inventories.MISSING]
  assert not missing, f"{project}: names that do not import: {missing}"


def test_the_inventories_regenerate_identically(tmp_path):
  pytest.importorskip("sphobjinv", reason="the docs extra writes the inventories")
  for written in inventories.write(tmp_path):
    assert _read_inventory(written) == _read_inventory(inventories.path(written.stem))
