"""Sphinx configuration of the cfl-jax documentation: getting started, the method, the studies, the
configuration reference, executed examples and the API reference built from the docstrings.

Build (as .ci/run does: warnings are errors, every reference to our own code must resolve, the
examples execute): ``sphinx-build -n -W --keep-going -b html docs docs/_build/html``.
``CFL_DOCS_EXECUTE=off`` skips running the examples for a quick look at the other pages.
"""

import os
import sys
import warnings

from sphinx.deprecation import RemovedInSphinx10Warning

_DOCS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_DOCS))
sys.path.insert(0, os.path.join(_DOCS, "_ext"))

import cfl_jax  # pylint: disable=wrong-import-position
import cfl_docs  # pylint: disable=wrong-import-position
import inventories  # pylint: disable=wrong-import-position

project = "cfl-jax"
author = "the cfl-jax authors"
copyright = f"2026, {author}"  # pylint: disable=redefined-builtin
release = version = cfl_jax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",  # after napoleon
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 served from _static: formulas render offline
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "sphinx_copybutton",
    "myst_nb",
    "cfl_docs",  # docs/_ext: config reference, module summaries, links to re-exported names
]
exclude_patterns = ["_build", "_ext", "jupyter_execute", "**.ipynb_checkpoints"]

# API pages: each opens with a summary table (autosummary / module-summary) of its names.
autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": False}
autodoc_inherit_docstrings = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# sphinx-autodoc-typehints 3.6 (the last for Python 3.11) calls an API Sphinx 10 removes.
warnings.filterwarnings("ignore", category=RemovedInSphinx10Warning,
                        module="sphinx_autodoc_typehints")
# Type hints go into the parameter descriptions; long unions print as their alias names.
typehints_formatter = cfl_docs.AnnotationFormatter()
# flax's TrainState fields are annotated with flax's (string) alias, which our module lacks.
autodoc_type_aliases = {"ArrayTree": "flax.typing.ArrayTree"}
typehints_document_rtype = True
typehints_use_signature = False
always_use_bars_union = True

# Names of jax, optax and flax link to those projects' docs through inventories kept in the
# repository (the build is offline): docs/_ext/inventories.py lists the names we cite.
intersphinx_mapping = {project: (url, str(inventories.path(project)))
                       for project, (url, _) in inventories.INVENTORIES.items()}
# Nitpicky (-n) checks every reference, also those into jax, optax and flax (a name missing from
# the inventories fails the build). Other projects' inventories are not kept, so references into
# them are allowed here by project; references to cfl_jax never are.
_EXTERNAL_PROJECTS = ("jaxlib", "numpy", "ml_collections", "etils", "orbax",
                      "chex", "tensorflow", "tensorflow_datasets", "tensorboardX", "safetensors",
                      "absl", "tqdm", "gcsfs", "fsspec", "scipy", "sklearn", "mnist1d")
_PYTHON_STDLIB = ("collections", "os", "typing", "types", "pathlib", "dataclasses", "contextlib",
                  "enum", "abc", "concurrent", "threading", "io", "datetime", "numbers", "logging",
                  "functools", "itertools", "subprocess", "json", "random", "re", "tempfile")
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(_EXTERNAL_PROJECTS + _PYTHON_STDLIB)})(\..+)?"),
]
# MyST: Markdown pages and the examples (text notebooks executed at build time).
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True
nb_execution_mode = "off" if os.environ.get("CFL_DOCS_EXECUTE") == "off" else "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_title = f"cfl-jax {version}"
html_static_path = ["_static"]
html_css_files = ["wide.css"]
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": False,
    "navigation_with_keys": False,
}
html_show_sourcelink = False
