"""Bring the jupytext notebooks of ``examples/notebooks/`` into the documentation.

At every build (``builder-inited``, before Sphinx looks for its sources) each
``examples/notebooks/*.py`` is copied to ``docs/notebooks/<name>.pct.py``, a suffix
that ``conf.py`` maps to jupytext's percent format for myst-nb, and
``docs/notebooks/index.rst`` lists them. Copies are written only when they changed
(so incremental builds and the execution cache keep working), and copies of notebooks
that no longer exist are removed. ``docs/notebooks/`` is generated: docs/.gitignore
keeps it out of git.
"""

from pathlib import Path

import jupytext

SUFFIX = ".pct.py"
INDEX = """\
Notebooks
=========

Longer walk-throughs than the gallery's, as notebooks. Their sources are jupytext
"percent" scripts in ``examples/notebooks/`` of the repository: open one in Jupyter
(with jupytext installed) or run it as a plain script. When the documentation is
built they run with ``SKANOMALY_NOTEBOOK_QUICK=1``, the notebooks' small settings, so
the figures and numbers below are those of a short run on a CPU.

"""


def read_percent(text, **kwargs):
    """Read a jupytext percent script as a notebook that names a kernel to run it.

    ``nb_custom_formats`` calls this; a script without jupytext's header names no
    kernel, and the execution then has none to start.
    """
    notebook = jupytext.reads(text, fmt="py:percent")
    spec = notebook.metadata.setdefault("kernelspec", {})
    spec.setdefault("name", "python3")
    spec.setdefault("display_name", "Python 3")
    spec.setdefault("language", "python")
    return notebook


def _write_if_changed(path, text):
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def copy_notebooks(app):
    source = Path(app.confdir, app.config.skanomaly_notebooks_dir).resolve()
    target = Path(app.srcdir, "notebooks")
    target.mkdir(exist_ok=True)
    scripts = sorted(p for p in source.glob("*.py") if not p.name.startswith("_")) if source.is_dir() else []
    wanted = {script.stem + SUFFIX for script in scripts}
    for stale in target.glob("*" + SUFFIX):
        if stale.name not in wanted:
            stale.unlink()
    for script in scripts:
        _write_if_changed(target / (script.stem + SUFFIX), script.read_text(encoding="utf-8"))
    if scripts:
        entries = "\n".join(f"   {script.stem}" for script in scripts)
        index = INDEX + f".. toctree::\n   :maxdepth: 1\n\n{entries}\n"
    else:
        index = INDEX + "No notebook yet: ``examples/notebooks/`` holds none.\n"
    _write_if_changed(target / "index.rst", index)


def setup(app):
    app.add_config_value("skanomaly_notebooks_dir", "../examples/notebooks", "env")
    app.connect("builder-inited", copy_notebooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
