"""The main job: ``python -m skanomaly demo``."""

import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from skanomaly.cli import main
from skanomaly.datasets import make_chest_phantoms
from skanomaly.metrics import anomaly_roc_auc
from skanomaly.io import load_model


def test_demo_trains_reports_and_writes_model_and_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--n-train", "60", "--n-test", "40", "--epochs", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "demo_report.json").read_text())
    assert f"ROC AUC = {report['roc_auc']:.3f}" in printed
    # The reported figures are those of the saved model on the held-back phantoms (the
    # demo's test set: seed + 1, lungs as the ROI), recomputed here from the file.
    test = make_chest_phantoms(40, image_size=32, anomaly_fraction=0.5, random_state=1)
    test_roi = np.where(test.masks, test.images, np.nan).astype(np.float32)
    reloaded = load_model(out / "cae_phantoms.safetensors")
    assert report["roc_auc"] == pytest.approx(anomaly_roc_auc(test.labels, reloaded.score_samples(test_roi)))
    flagged = reloaded.predict(test_roi) == -1
    assert report["predict_sensitivity"] == pytest.approx(flagged[test.labels == 1].mean())
    assert report["predict_specificity"] == pytest.approx(1 - flagged[test.labels == 0].mean())
    png = (out / "anomaly_maps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    safe = load_model(out / "cae_phantoms.safetensors")
    pickled = joblib.load(out / "cae_phantoms.joblib")
    X = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(safe.score_samples(X), pickled.score_samples(X))


def test_readme_test_command_is_what_ci_runs():
    """.ci/run reads the line after the README's marker; make sure that line exists."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    marker = readme.index("<!-- test-command -->")
    block = readme[marker:].split("```")[1].strip().splitlines()
    assert block[0] == "bash" and "pytest" in block[1]
    extracted = subprocess.run(
        ["awk", '/<!-- test-command -->/{found=1; next} found && /^[^`]/ {print; exit}', "README.md"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert extracted == block[1]


def test_module_entry_point_prints_help():
    result = subprocess.run(
        [sys.executable, "-m", "skanomaly", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in result.stdout
