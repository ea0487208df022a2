"""Sphinx configuration of the skanomaly documentation.

numpydoc API pages, a sphinx-gallery over ``examples/plot_*.py`` (executed), the
notebooks of ``examples/notebooks/`` (jupytext percent scripts) rendered by myst-nb,
and benchmark pages generated from ``benchmarks/results/*.json``.

The build needs no network and runs with warnings as errors (``make -C docs html``).
Switches, all environment variables so that ``make`` and the tests can set them:

``SKANOMALY_DOCS_INTERSPHINX=1``
    Link to the Python, NumPy, scikit-learn, skorch and PyTorch documentation. Off by
    default: intersphinx downloads their inventories, and an offline build would warn
    (and so fail) on every one it cannot reach. Without it those references render as
    plain code, with no warning.
``SKANOMALY_DOCS_GALLERY=0``
    Do not execute the gallery examples (their pages are still written, with code and
    text but no figures or output). The default executes them, each on the phantoms in
    under a minute on a CPU.
``SKANOMALY_DOCS_NOTEBOOKS=0``
    Do not execute the notebooks (see ``nb_execution_mode`` below).
``SKANOMALY_DOCS_EXAMPLES=DIR``
    Take the gallery's sources from DIR instead of ``../examples`` (the test that
    builds a copy of ``docs/`` elsewhere sets it).
"""

import os
import sys
from pathlib import Path

import skanomaly

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))


def _flag(name, default):
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in {"0", "false", "no", "off"}


project = "skanomaly"
author = "skanomaly developers"
copyright = "skanomaly developers"
release = skanomaly.__version__
version = release
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_nb",
    # Local extensions (docs/_ext): notebooks copied in, benchmark pages written.
    "skanomaly_notebooks",
    "skanomaly_benchmarks",
]
autosummary_generate = True
numpydoc_show_class_members = False
# The package's parameter lists use "{a, b}" sets and prose types; numpydoc would try
# to cross-reference every word of them.
numpydoc_xref_param_type = False

# ---------------------------------------------------------------- intersphinx
# Optional: see the module docstring. With it on and a site unreachable, the build
# fails (warnings are errors), which is what a release build that asked for the links
# should do.
if _flag("SKANOMALY_DOCS_INTERSPHINX", False):
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "sklearn": ("https://scikit-learn.org/stable", None),
        "skorch": ("https://skorch.readthedocs.io/en/stable", None),
        "torch": ("https://pytorch.org/docs/stable", None),
    }

# ---------------------------------------------------------------- gallery
# Every examples/plot_*.py is a gallery entry, executed at build time: one per
# detector and one per preprocessing step, each under a minute on one CPU thread on
# the synthetic phantoms (the gallery's "computation times" page lists them). The
# notebooks of examples/notebooks/ are rendered by myst-nb (below).
# sphinx-gallery would also read every subfolder of examples/ that has a README
# (examples/notebooks/ has one, and its scripts are notebooks, not gallery entries):
# the gallery's sources are the README.txt and the plot_*.py of examples/ alone,
# copied into _gallery/ (generated, docs/.gitignore) when they change.
EXAMPLES = Path(os.environ.get("SKANOMALY_DOCS_EXAMPLES", DOCS.parent / "examples")).resolve()
GALLERY_SOURCE = DOCS / "_gallery"


def _sync_gallery_sources():
    GALLERY_SOURCE.mkdir(exist_ok=True)
    wanted = {p.name: p for p in [EXAMPLES / "README.txt", *sorted(EXAMPLES.glob("plot_*.py"))] if p.is_file()}
    for stale in GALLERY_SOURCE.iterdir():
        if stale.is_file() and stale.name not in wanted:
            stale.unlink()
    for name, path in wanted.items():
        target = GALLERY_SOURCE / name
        text = path.read_text(encoding="utf-8")
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")


_sync_gallery_sources()

if _flag("SKANOMALY_DOCS_GALLERY", True):
    import torch

    # The gallery runs in this process, on one torch thread: the examples are sized
    # for that ("under a minute on one CPU thread", as tests/test_examples.py runs
    # them), and on networks this small a second thread gains little on an idle
    # machine and costs a great deal on a busy one (threads waiting on each other).
    torch.set_num_threads(1)
sphinx_gallery_conf = {
    "examples_dirs": "_gallery",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "plot_gallery": "True" if _flag("SKANOMALY_DOCS_GALLERY", True) else "False",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    # A failing example fails the build: sphinx-gallery runs them all, then raises.
    "only_warn_on_example_error": False,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib", "seaborn"),
}

# ---------------------------------------------------------------- notebooks
# examples/notebooks/*.py are jupytext percent scripts (tests/test_notebooks.py runs
# them). The skanomaly_notebooks extension copies them to notebooks/*.pct.py in this
# folder at every build (a suffix of their own, so that neither conf.py nor the
# gallery's copies of the examples are read as notebooks) and writes notebooks/index.rst.
nb_custom_formats = {".pct.py": ["skanomaly_notebooks.read_percent", {}]}
# Executed, with SKANOMALY_NOTEBOOK_QUICK=1 (the notebooks' own switch to small
# settings, the one tests/test_notebooks.py uses), so that the pages show the figures
# and numbers a reader would get: a page of code without its outputs teaches little.
# Quick settings keep it short (the five notebooks took 17-23 s each, about 100 s of
# a 5.5-minute build on the 2-core CPU). Execution is cached in docs/_build/.jupyter_cache: a notebook is re-run only
# when its code changes. SKANOMALY_DOCS_NOTEBOOKS=0 renders them without outputs
# (tests/test_docs.py does, since tests/test_notebooks.py already runs them).
if _flag("SKANOMALY_DOCS_NOTEBOOKS", True):
    nb_execution_mode = "cache"
    os.environ.setdefault("SKANOMALY_NOTEBOOK_QUICK", "1")
else:
    nb_execution_mode = "off"
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_execution_timeout = 600
# A cell that raises fails the build (as a failing gallery example does).
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
# myst-nb renders the notebooks; the .rst pages stay reStructuredText.
myst_enable_extensions = ["dollarmath", "amsmath"]
suppress_warnings = ["mystnb.unknown_mime_type"]

# ---------------------------------------------------------------- benchmarks
# The skanomaly_benchmarks extension writes benchmarks/*.rst and their figures from
# ../benchmarks/results/*.json at every build: tables and plots of numbers, never
# images of the data sets.
skanomaly_benchmark_results = str(DOCS.parent / "benchmarks" / "results")

# ---------------------------------------------------------------- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"skanomaly {release}"
html_theme_options = {
    # No icon links or analytics: nothing the page would fetch from elsewhere.
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
exclude_patterns = ["_build", "_ext", "_gallery", "**.ipynb_checkpoints", "auto_examples/*.ipynb", "auto_examples/*.py"]
