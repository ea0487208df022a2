"""The documentation builds with warnings as errors, offline, and has its key pages.

Skipped unless the ``docs`` extra is installed (``pip install -e ".[docs]"``). The
build runs in a copy of ``docs/`` under a temporary folder, so it neither reads nor
disturbs a build in the working tree. It runs neither the gallery examples
(``tests/test_examples.py`` runs each of them) nor the notebooks
(``tests/test_notebooks.py`` does): ``SKANOMALY_DOCS_GALLERY=0`` and
``SKANOMALY_DOCS_NOTEBOOKS=0`` render their pages without outputs. Everything else
is as ``make -C docs html`` builds it: the API pages, the detector pages, the
benchmark pages and their figures. About a minute on one core.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_EXTRA = ["sphinx", "numpydoc", "sphinx_gallery", "pydata_sphinx_theme", "myst_nb", "jupytext"]
MISSING = [name for name in DOCS_EXTRA if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the docs extra is not installed (missing {MISSING})")

#: written by the build in docs/, never copied into the test's build
GENERATED = ["_build", "_gallery", "generated", "auto_examples", "notebooks", "benchmarks", "sg_execution_times.rst"]
DETECTOR_PAGES = ["cae", "vae", "anogan", "fanogan", "oneclass", "healthygan", "bigan", "alphagan"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    source = tmp / "docs"
    shutil.copytree(ROOT / "docs", source, ignore=shutil.ignore_patterns(*GENERATED))
    out = tmp / "html"
    env = {
        **os.environ,
        "SKANOMALY_DOCS_GALLERY": "0",
        "SKANOMALY_DOCS_NOTEBOOKS": "0",
        "SKANOMALY_DOCS_INTERSPHINX": "0",
        "SKANOMALY_DOCS_EXAMPLES": str(ROOT / "examples"),
        "MPLBACKEND": "Agg",
    }
    command = [
        sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
        "-d", str(tmp / "doctrees"),
        "-D", f"skanomaly_notebooks_dir={ROOT / 'examples' / 'notebooks'}",
        "-D", f"skanomaly_benchmark_results={ROOT / 'benchmarks' / 'results'}",
        str(source), str(out),
    ]
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return source, out


def test_builds_without_a_warning(site):
    # -W turns every warning into an error: a build that returned 0 had none.
    assert (site[1] / "index.html").is_file()


def test_key_pages_exist(site):
    out = site[1]
    pages = ["index", "user_guide", "api", "design", "auto_examples/index", "notebooks/index",
             "benchmarks/index", "generated/skanomaly.detectors.CAEDetector"]
    pages += [f"detectors/{name}" for name in DETECTOR_PAGES]
    pages += [f"auto_examples/{path.stem}" for path in sorted((ROOT / "examples").glob("plot_*.py"))]
    pages += [f"notebooks/{path.stem}" for path in sorted((ROOT / "examples" / "notebooks").glob("[!_]*.py"))]
    pages += [f"benchmarks/{path.stem}" for path in sorted((ROOT / "benchmarks" / "results").glob("*.json"))]
    missing = [page for page in pages if not (out / f"{page}.html").is_file()]
    assert not missing, missing


def test_detector_pages_show_equations_and_settings(site):
    for name in DETECTOR_PAGES:
        text = (site[1] / "detectors" / f"{name}.html").read_text(encoding="utf-8")
        assert "equations and the parameters that implement them" in text, name
        assert "small settings" in text.lower(), name
        assert 'class="math' in text, name  # rendered equations
    guide = (site[1] / "user_guide.html").read_text(encoding="utf-8")
    assert all(f"detectors/{name}.html" in guide for name in DETECTOR_PAGES)


def test_benchmark_pages_show_the_json_numbers(site):
    out = site[1]
    pediatric = json.loads((ROOT / "benchmarks" / "results" / "pediatric.json").read_text())
    index = (out / "benchmarks" / "index.html").read_text(encoding="utf-8")
    for name, entry in pediatric["detectors"].items():
        assert f"{entry['test_roc_auc_mean']:.4g}" in index, name
    figures = sorted(p.name for p in (out / "_images").glob("pediatric_*.png"))
    assert figures == ["pediatric_auc_per_seed.png", "pediatric_operating_points.png"]
    cpu = json.loads((ROOT / "benchmarks" / "results" / "cpu_settings.json").read_text())
    page = (out / "benchmarks" / "cpu_settings.html").read_text(encoding="utf-8")
    assert f"{cpu['detectors']['CAEDetector']['small']['fit_seconds']:.4g}" in page


def test_benchmark_pages_survive_unknown_and_broken_files(tmp_path):
    """A results file of a layout the figures do not know is shown as tables; one that
    is not JSON is a warning, and a build with -W fails on it."""
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        import skanomaly_benchmarks as bench
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))
    odd = {"protocol": "odd", "rows": [{"kind": "a", "x": 1.5}, {"kind": "b", "x": [1, 2]}], "deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}
    text = bench.file_page("odd", odd, [])
    assert "1.5" in text and ".. rubric::" in text
    # The pediatric layout with a seed missing its numbers still draws.
    broken = {"detectors": {"X": {"per_seed": {"0": {"test_roc_auc": 0.7}, "1": {}}, "test_roc_auc_mean": 0.7}}}

    class App:
        class config:
            skanomaly_benchmark_results = str(tmp_path / "results")

        srcdir = str(tmp_path / "src")

    (tmp_path / "results").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "results" / "pediatric.json").write_text(json.dumps(broken))
    (tmp_path / "results" / "odd.json").write_text(json.dumps(odd))
    (tmp_path / "results" / "cut_short.json").write_text('{"detectors": {')
    bench.build_pages(App)
    assert (tmp_path / "src" / "benchmarks" / "odd.rst").is_file()
    assert not (tmp_path / "src" / "benchmarks" / "cut_short.rst").exists()
    assert "pediatric_auc_per_seed.png" in (tmp_path / "src" / "benchmarks" / "index.rst").read_text()
