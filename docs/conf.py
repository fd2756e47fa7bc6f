"""Sphinx configuration of the cfl-jax documentation: the method, the studies and the API
reference built from the docstrings. Build: ``sphinx-build -W -b html docs docs/_build``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cfl_jax  # pylint: disable=wrong-import-position

project = "cfl-jax"
release = version = cfl_jax.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 2
html_theme = "alabaster"
