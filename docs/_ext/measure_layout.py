"""Measures the built site in headless Chromium: each page's height and what is cut off.

Run after a build, with Chromium installed (not needed by the build or the tests)::

  python docs/_ext/measure_layout.py docs/_build/html [--width=1400]

Prints one line per page: its height in CSS pixels at that window width, then every element that
scrolls sideways (a code block, a table) or sticks out of the article column, with its widths.
tests/test_docs_layout.py checks the sources for the causes without a browser.
"""

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

_MEASURE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const article = document.querySelector(".bd-article") || document.body;
  const right = article.getBoundingClientRect().right;
  const cut = [];
  for (const el of article.querySelectorAll("*")) {
    if (el.closest(".math, mjx-container")) continue;  // MathJax's boxes overhang by design
    const style = getComputedStyle(el);
    const scrolls = el.scrollWidth > el.clientWidth + 1 && style.overflowX !== "visible";
    const sticksOut = el.getBoundingClientRect().right > right + 1;
    if ((scrolls || sticksOut) && el.clientWidth > 0) {
      cut.push({tag: el.tagName.toLowerCase(), cls: el.className, scroll: el.scrollWidth,
                width: el.clientWidth, text: el.textContent.trim().slice(0, 60)});
    }
  }
  const out = document.createElement("pre");
  out.id = "layout-measure";
  out.textContent = JSON.stringify({height: document.documentElement.scrollHeight,
                                    column: Math.round(article.getBoundingClientRect().width),
                                    cut: cut});
  document.body.appendChild(out);
}, 500));
</script>"""
_SKIP = ("genindex.html", "search.html", "py-modindex.html")


def pages(site: pathlib.Path) -> list[pathlib.Path]:
  """The site's content pages (no index, search, sources or module listings)."""
  return sorted(p for p in site.rglob("*.html") if p.name not in _SKIP
                and not p.name.startswith("_measure_")
                and not p.relative_to(site).parts[0].startswith("_"))


def measure(page: pathlib.Path, width: int, chromium: str, tries: int = 3) -> dict:
  """{height, column, cut} of ``page`` in a window ``width`` px wide."""
  copy = page.with_name("_measure_" + page.name)
  copy.write_text(page.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"),
                  encoding="utf-8")
  try:
    for _ in range(tries):  # on a busy machine the page may not finish within the time budget
      with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", f"--window-size={width},900",
             "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()],
            capture_output=True, text=True, timeout=120, check=True).stdout
      found = re.search(r'<pre id="layout-measure">(.*?)</pre>', dom, re.S)
      if found:
        break
  finally:
    copy.unlink()
  if not found:
    raise RuntimeError(f"{page}: the measuring script did not run in {tries} tries")
  return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<")
                    .replace("&gt;", ">").replace("&quot;", '"'))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("site", type=pathlib.Path)
  parser.add_argument("--width", type=int, default=1400)
  args = parser.parse_args()
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  if not chromium:
    sys.exit("needs chromium on the PATH (Debian: apt-get install chromium)")
  for page in pages(args.site):
    result = measure(page, args.width, chromium)
    name = page.relative_to(args.site)
    print(f"{result['height']:6d} px  column {result['column']} px  {name}", flush=True)
    for item in result["cut"]:
      print(f"         cut: <{item['tag']} class={item['cls']!r}> {item['scroll']} > "
            f"{item['width']} px: {item['text']!r}", flush=True)


if __name__ == "__main__":
  main()
