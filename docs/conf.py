"""Sphinx configuration of the fastxent documentation.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -b html -nW --keep-going docs docs/_build/html

``-n`` makes every unresolved cross-reference a warning and ``-W`` every
warning an error, so a broken reference, a docstring that numpydoc validation
flags, or a gallery example that raises fails the build.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))

import fastxent  # noqa: E402

project = "fastxent"
author = "fastxent developers"
copyright = "fastxent developers"
release = fastxent.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    # MathJax 3 copied into the site (_static/mathjax) instead of loaded from
    # a CDN: the pages render their formulas offline too (a site built on a
    # machine without internet, read from file://).
    "sphinx-mathjax-offline",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "offline_intersphinx",
    "bench_tables",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    # sphinx-gallery writes these; the gallery's sources are plain scripts.
    "gallery/*.py",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.md5",
    "auto_examples/*.json",
    "sg_execution_times.rst",
    "gallery/README.rst",
]
templates_path = ["_templates"]
html_static_path = ["_static"]
html_css_files = ["fastxent.css"]

# -- MyST (the Markdown pages: guide, changelog, contributing) ---------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc / autosummary / numpydoc ----------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # the numpydoc "Parameters" section documents types
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = True
# Docstrings of every public name are validated during the build (a failure
# is a warning, so -W fails the build).  Checked: everything numpydoc knows
# except the checks listed here, which the project does not require:
#   ES01  an extended summary          SA01  a "See Also" section
#   EX01  an "Examples" section on every object (the public functions have
#         one; methods inherited from scikit-learn's API contract don't)
#   GL08  a docstring on every object (scikit-learn's inherited methods)
#   PR02  unknown parameters (numpydoc cannot see through *args/**options)
#   PR03  parameters in signature order (the keyword-only options are
#         documented in the order that reads best: the loss options first)
#   RT02  the first line of "Returns" naming its type only
#   SS05  the summary starting with a verb in the third person ("Return")
numpydoc_validation_checks = {"all", "ES01", "SA01", "EX01", "GL08", "PR02", "PR03", "RT02", "SS05"}
# Objects documented by scikit-learn or Dask, not by fastxent.
numpydoc_validation_exclude = {
    r"\.get_params$",
    r"\.set_params$",
    r"\.score$",
    r"\.set_fit_request$",
    r"\.set_score_request$",
    r"\.get_metadata_routing$",
    r"\.__init__$",
}

# -- intersphinx: offline ------------------------------------------------------
# The build machines reach no documentation site (CI only reaches PyPI), and
# an inventory that cannot be fetched is a warning, which -W turns into a
# failed build.  So every mapping's *first* location is a small inventory
# written at build time by the offline_intersphinx extension from
# docs/_ext/intersphinx_objects.py (the names these pages refer to, each with
# its URL on the project's real site): the links point at the real sites and
# no network is needed.  Sphinx stops at the first location that loads, so
# the remote objects.inv (second) is never fetched while the local one loads.
# A reference to a name missing from the local inventory is an unresolved
# reference under -n: add the name to intersphinx_objects.py.
intersphinx_mapping = {
    name: (url, (os.path.join(HERE, "_build", "intersphinx", f"{name}.inv"), None))
    for name, url in {
        "python": "https://docs.python.org/3/",
        "numpy": "https://numpy.org/doc/stable/",
        "scipy": "https://docs.scipy.org/doc/scipy/",
        "sklearn": "https://scikit-learn.org/stable/",
        "torch": "https://docs.pytorch.org/docs/stable/",
        "dask": "https://docs.dask.org/en/stable/",
        "distributed": "https://distributed.dask.org/en/stable/",
    }.items()
}
intersphinx_timeout = 5

# -- sphinx-gallery -----------------------------------------------------------
# The gallery's sources are docs/gallery/plot_*.py (small, run at every
# build); examples/ keeps the full-size command-line scripts.
sphinx_gallery_conf = {
    "examples_dirs": ["gallery"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    # Numbered file names give the order: from a first training loop to
    # the recorded results.
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "show_memory": False,
    "plot_gallery": "True",
    "matplotlib_animations": False,
    "reference_url": {"fastxent": None},
    "min_reported_time": 1,
}

# -- HTML ---------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"fastxent {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
}
html_sidebars = {"index": [], "changelog": []}
html_show_sourcelink = True
