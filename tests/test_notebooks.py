"""The teaching notebooks run to the end and show what their text says.

Each notebook of ``examples/notebooks/`` (a jupytext "percent" script) is read into a
notebook with jupytext and executed top to bottom by nbclient in a fresh Python
kernel of this interpreter, as a student runs it, with the notebooks' small settings
(``SKANOMALY_NOTEBOOK_QUICK=1``), the Agg backend, one torch thread and no data folder
(the parts on real films print that they are skipped).

After the last cell, one more cell prints, as JSON, the figures that the notebook's
prose relies on, and the tests below check the *direction* of each claim: with
margins taken from the sample sizes (standard errors the notebooks print, or
binomial ones), never from one machine's output. Measured with the quick settings
(one torch thread, this project's 2-core CPU, torch 2.14.1), each notebook runs in
17-25 s including the kernel's start.
"""

import json
import math
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).parents[1] / "examples" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
MARKER = "__SKANOMALY_NOTEBOOK_SUMMARY__"
KERNEL_NAME = "skanomaly-notebook-tests"

# What each notebook's prose relies on: a Python expression evaluated in the kernel
# after the last cell, giving a dict of plain numbers.
SUMMARIES = {
    "01_unsupervised_anomaly_detection.py": """dict(
        auc_cae=float(auc_cae), auc_baseline=float(auc_baseline),
        hit_rate=float(hit_rate), chance_rate=float(chance_rate), n_abnormal=int((y_test == 1).sum()),
        valid_cut_fpr=float(test_fpr["5 % of the validation normals"]),
        n_valid_normal=int(n_valid_normal), n_test_normal=int(n_test_normal))""",
    "02_reconstruction_is_not_enough.py": """dict(
        names=list(models), normal_error=[normal_error[n] for n in models],
        kept=[kept[n] for n in models], auc=[auc[n] for n in models],
        flipped=[flagged_flipped[n] for n in models], n_flipped=int(len(flipped)),
        auc_kld=float(auc_kld))""",
    "03_gans_for_anomaly_detection.py": """dict(
        loss_drop=float(loss_drop), speedup=float(speedup),
        anogan_auc=float(anogan_results[SEARCH_STEPS]["auc"]), fanogan_auc=float(fanogan_auc))""",
    "04_patches_and_lung_masks.py": """dict(
        contrast_before=float(contrast_before.mean()), contrast_after=float(contrast_after.mean()),
        variation_before=float(variation_before), variation_after=float(variation_after),
        n_train=int(N_TRAIN), patch_auc=float(patch_auc), image_auc=float(image_auc))""",
    "05_model_selection_done_right.py": """dict(
        optimism_honest=float(optimism["honest"].mean()), optimism_leaky=float(optimism["leaky"].mean()),
        se_honest=float(optimism_se["honest"]), se_leaky=float(optimism_se["leaky"]),
        leaky_minus_honest=[float(v) for v in reported["leaky"] - reported["honest"]])""",
    "06_acquisition_shift.py": """dict(
        auc={name: [float(v) for v in row.values()] for name, row in auc.items()},
        false_alarms=false_alarms, identical=identical, moved=moved, t_statistic=t_statistic,
        n_abnormal=int(sick.sum()), n_normal=int((~sick).sum()))""",
}


def test_every_notebook_is_found_and_has_a_summary():
    assert len(NOTEBOOKS) == 6
    assert {p.name for p in NOTEBOOKS} == set(SUMMARIES)


@pytest.fixture(scope="module")
def kernel_spec_dir(tmp_path_factory):
    """A kernelspec that starts this interpreter with the notebooks' small settings.

    A spec of its own rather than whatever ``python3`` resolves to: a user-level
    ``python3`` kernel can point at another environment, and its ``env`` sets the
    quick settings and the threads without touching this process's environment.
    """
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL_NAME
    spec.mkdir()
    env = {
        "SKANOMALY_NOTEBOOK_QUICK": "1",
        "MPLBACKEND": "Agg",
        # The notebooks read an empty value as "no data folder": parts on real films skip.
        "SKANOMALY_DATA_DIR": "",
        # One torch thread: the suite runs two workers on two cores, and one thread
        # also makes the kernel's arithmetic that of the figures the docstring quotes.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "skanomaly notebook tests",
        "language": "python",
        "env": env,
    }))
    return root


def run_notebook(path, kernel_dir):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    notebook = jupytext.read(path)
    # The summary, and how many figures the notebook drew (under Agg, plt.show() keeps
    # them open rather than sending images).
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import json as _json\nimport matplotlib.pyplot as _plt\n"
        f"print({MARKER!r} + _json.dumps(dict({SUMMARIES[path.name]}, "
        "_figures=len(_plt.get_fignums()), _backend=_plt.get_backend())))"
    ))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    client = nbclient.NotebookClient(
        notebook, km=manager, timeout=600, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    text = "".join(
        output.get("text", "")
        for output in notebook.cells[-1].outputs
        if output.get("output_type") == "stream"
    )
    assert MARKER in text, f"the summary cell printed nothing: {text!r}"
    return notebook, json.loads(text.split(MARKER, 1)[1])


def auc_se(auc, n_pos, n_neg):
    """Hanley and McNeil's standard error of a ROC AUC."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return math.sqrt(max(var, 1e-12))


def check_01(s):
    # "Not far from chance" against "far higher": the CAE beats the intensity
    # baseline by more than two standard errors of either AUC.
    n = s["n_abnormal"]
    margin = 2 * (auc_se(s["auc_cae"], n, n) + auc_se(s["auc_baseline"], n, n))
    assert s["auc_cae"] - s["auc_baseline"] > margin, s
    # The maps point at the nodule far more often than a random lung pixel would.
    assert s["hit_rate"] - s["chance_rate"] > 2 * math.sqrt(0.25 / n), s
    # A 5 % cut set on validation normals keeps its promise on the test normals,
    # within three standard errors of a rate chosen on one set and measured on another.
    se = math.sqrt(0.05 * 0.95 * (1 / s["n_valid_normal"] + 1 / s["n_test_normal"]))
    assert abs(s["valid_cut_fpr"] - 0.05) <= 3 * se, s


def check_02(s):
    wide, middle, narrow, vae = range(4)
    assert s["names"][wide].startswith("wide") and s["names"][narrow].startswith("narrow")
    error, kept, auc, flipped = s["normal_error"], s["kept"], s["auc"], s["flipped"]
    # From the narrow CAE to the wide one: a better copy of normal lungs...
    assert error[narrow] > error[middle] > error[wide], s
    # ... that reconstructs more of the nodule, and detects worse.
    assert kept[wide] > kept[narrow], s
    assert auc[wide] < min(auc[middle], auc[narrow]), s
    # Upside-down chests: the narrow CAE flags more of them than the wide one, by more
    # than two binomial standard errors of the difference.
    n = s["n_flipped"]
    assert flipped[narrow] - flipped[wide] > 2 * math.sqrt(0.5 / n), s
    # The VAE's KL score detects small nodules worse than its reconstruction error.
    assert s["auc_kld"] < auc[vae], s


def check_03(s):
    # The search lowers its loss, and the encoder scores faster than the search.
    assert s["loss_drop"] < 1, s
    assert s["speedup"] > 3, s
    # "Both AUCs are far below what the autoencoders reached" (above 0.9 there).
    assert s["anogan_auc"] < 0.85 and s["fanogan_auc"] < 0.85, s


def check_04(s):
    # CLAHE raises the lung contrast and makes it more alike between patients.
    assert s["contrast_after"] > s["contrast_before"], s
    assert s["variation_after"] < s["variation_before"], s


def check_05(s):
    # The leaky protocol's optimism is positive by many standard errors and larger
    # than the honest one's; the honest one is unbiased within a few standard errors;
    # on every test set the leaky figure is at least the honest one (it is a maximum).
    assert s["optimism_leaky"] > 4 * s["se_leaky"], s
    assert s["optimism_leaky"] - s["optimism_honest"] > 4 * math.hypot(s["se_leaky"], s["se_honest"]), s
    assert abs(s["optimism_honest"]) < 4 * s["se_honest"], s
    assert min(s["leaky_minus_honest"]) >= -1e-12, s


def check_06(s):
    same, new, sick_b, sick_a = range(4)
    cae, synthetic, baseline = s["auc"]["CAE"], s["auc"]["synthetic anomalies"], s["auc"]["exposure baseline"]
    n_pos, n_neg = s["n_abnormal"], s["n_normal"]
    # "The same figure four times": its scores are the same numbers on both machines.
    assert s["identical"] == {"CAE": False, "synthetic anomalies": True}, s
    assert len(set(synthetic)) == 1, s
    # The CAE and the baseline rank by machine where the classes come from different
    # machines: their AUCs move by more than two standard errors.
    for row in (cae, baseline):
        se = auc_se(row[same], n_pos, n_neg)
        assert abs(row[sick_b] - row[sick_a]) > 4 * se, s
    # The CAE flags normal films of machine B far more often than of A (binomial
    # standard errors of the two rates); the synthetic detector flags the same ones.
    rate = s["false_alarms"]["CAE"]
    assert rate["B"] - rate["A"] > 3 * math.sqrt(0.25 / n_neg), s
    assert s["false_alarms"]["synthetic anomalies"]["A"] == s["false_alarms"]["synthetic anomalies"]["B"], s
    # The change of machine moves the CAE's scores of normal films beyond chance (paired
    # t above 3), the synthetic detector's not at all.
    assert abs(s["t_statistic"]["CAE"]) > 3 and s["moved"]["synthetic anomalies"] == 0, s


CHECKS = {name: globals()[f"check_{name[:2]}"] for name in SUMMARIES}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_shows_what_it_says(path, kernel_spec_dir):
    notebook, summary = run_notebook(path, kernel_spec_dir)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert summary["_backend"].lower() == "agg"
    assert summary["_figures"] >= 1, "the notebook drew no figure"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "quick settings: True" in text
    CHECKS[path.name](summary)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_a_percent_script_without_outputs(path):
    notebook = jupytext.read(path)
    assert notebook.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    source = path.read_text()
    # The small-settings switch and the data folder the README describes.
    assert 'os.environ.get("SKANOMALY_NOTEBOOK_QUICK") == "1"' in source
    assert 'os.environ.get("SKANOMALY_DATA_DIR", "")' in source
