"""Sphinx configuration of taskpipe's documentation (``sphinx-build -W -b html docs docs/_build/html``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "taskpipe"
author = "the taskpipe developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# The guide pages are README.rst's sections; its relative links to files in the
# repository are not documents of this site.
suppress_warnings = ["ref.ref"]
nitpicky = False
