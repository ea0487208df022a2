"""The command line: ``skanomaly fit / score / evaluate / demo`` (and ``python -m skanomaly``)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from PIL import Image

from skanomaly import cli
from skanomaly.cli import DEFAULT_DETECTOR, main
from skanomaly.detectors import SyntheticAnomalyDetector
from skanomaly import detectors
from skanomaly.datasets import load_images, make_chest_phantoms
from skanomaly.detectors import CAEDetector
from skanomaly.io import load_model
from skanomaly.metrics import anomaly_roc_auc, intensity_baseline_scores
from skanomaly.utils.tags import get_detector_tags

# Tiny settings: every fit below trains in about a second on one core.
CAE_PARAMS = ["--param", "channels=4,8", "--param", "max_epochs=2", "--param", "lr=2e-3"]


def _params(**params):
    return [arg for key, value in params.items() for arg in ("--param", f"{key}={value}")]


# Fast command-line settings for every detector the command line offers (the
# package's detectors, skanomaly.detectors.__all__) on the 32 px phantoms below;
# test_every_detector_has_fast_cli_settings fails until a new detector has some.
CLI_PARAMS = {
    "CAEDetector": CAE_PARAMS,
    "VAEDetector": _params(channels="4,8", latent_dim=4, max_epochs=2),
    "AnoGANDetector": _params(channels="4,8", latent_dim=4, max_epochs=2, n_search_steps=3),
    "OneClassAdversarialDetector": _params(channels="4,8,8", latent_dim=4, max_epochs=2),
    "BiGANDetector": _params(channels="4,8,8", latent_dim=4, max_epochs=2),
    "AlphaGANDetector": _params(channels="4,8,8", latent_dim=4, minibatch_kernel_dims=4, max_epochs=2),
    "SyntheticAnomalyDetector": _params(base_channels=4, depth=2, max_epochs=2),
    "FAnoGANDetector": _params(encoder="critic", gan_channels="4,4,4,4", latent_dim=4, gan_iterations=6,
                               max_epochs=2),
    # {train}: the training folder, NORMAL and ABNORMAL, as the unlabelled mix.
    "HealthyGAN": _params(generator_width=2, n_residual_blocks=1, critic_width=2, max_iter=4)
    + ["--unlabelled", "{train}"],
}


def _cli_params(name, folders):
    return [arg.replace("{train}", str(folders / "train")) for arg in CLI_PARAMS[name]]


def test_demo_trains_reports_and_writes_model_and_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--n-train", "60", "--n-test", "40", "--epochs", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "demo_report.json").read_text())
    assert f"ROC AUC = {report['roc_auc']:.3f}" in printed
    closing = printed.strip().splitlines()[-1]
    written = sorted(p.name for p in out.iterdir())
    assert closing.startswith("Wrote") and all(name in closing for name in written), (closing, written)
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
    for command in ("fit", "score", "evaluate", "demo"):
        assert command in result.stdout
    assert "NORMAL" in result.stdout  # the labelling rule is in the help


# ----------------------------------------------------------------- fit / score / evaluate
def _save_png(folder, name, image):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(255 * image).astype(np.uint8)).save(folder / name)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """PNG phantoms: train/{NORMAL (30), ABNORMAL (5)} and test/{NORMAL, ABNORMAL} (12 + 12)."""
    root = tmp_path_factory.mktemp("cli_data")
    train = make_chest_phantoms(30, image_size=32, anomaly_fraction=0.0, random_state=0)
    sick = make_chest_phantoms(5, image_size=32, anomaly_fraction=1.0, random_state=2)
    test = make_chest_phantoms(24, image_size=32, anomaly_fraction=0.5, random_state=1)
    for i, image in enumerate(train.images):
        _save_png(root / "train" / "NORMAL", f"n{i:03d}.png", image)
    for i, image in enumerate(sick.images):
        _save_png(root / "train" / "ABNORMAL", f"a{i:03d}.png", image)
    for i, (image, label) in enumerate(zip(test.images, test.labels)):
        _save_png(root / "test" / ("ABNORMAL" if label else "NORMAL"), f"t{i:03d}.png", image)
    return root


@pytest.fixture(scope="module")
def model_path(folders):
    out = folders / "cae.skan"
    code = main(["fit", "--detector", "CAEDetector", *CAE_PARAMS, "--train", str(folders / "train"),
                 "--out", str(out), "--seed", "3", "--quiet"])
    assert code == 0
    return out


def _read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_detector_has_fast_cli_settings():
    missing = sorted(set(detectors.__all__) - set(CLI_PARAMS))
    assert not missing, f"add fast command-line settings for {missing} to CLI_PARAMS in tests/test_cli.py"


@pytest.mark.parametrize("name", sorted(detectors.__all__))
def test_every_detector_fits_and_scores_from_the_command_line(name, folders, tmp_path):
    """fit writes a model file of the detector, score writes what that model scores."""
    if name not in CLI_PARAMS:
        pytest.fail(f"no fast command-line settings for {name} (CLI_PARAMS)")
    model, out = tmp_path / "model.skan", tmp_path / "scores.csv"
    assert main(["fit", "--detector", name, *_cli_params(name, folders), "--train", str(folders / "train"),
                 "--out", str(model), "-q"]) == 0
    assert main(["score", str(model), str(folders / "test"), "--out", str(out), "-q"]) == 0
    loaded = load_model(model)
    assert type(loaded) is getattr(detectors, name)
    rows = _read_rows(out)
    scores = np.array([float(r["score"]) for r in rows])
    np.testing.assert_array_equal(scores, loaded.score_samples(load_images([Path(r["path"]) for r in rows])))


def test_fit_trains_on_the_normal_folder_only(folders, model_path, capsys):
    """The file holds the model the Python API gives on the NORMAL images alone."""
    normal = sorted((folders / "train" / "NORMAL").glob("*.png"))
    expected = CAEDetector(channels=(4, 8), max_epochs=2, lr=2e-3, random_state=3, device="auto")
    expected.fit(load_images(normal))
    loaded = load_model(model_path)
    assert loaded.get_params()["channels"] == (4, 8) and loaded.random_state == 3
    X = load_images(sorted((folders / "test").rglob("*.png")))
    np.testing.assert_allclose(loaded.score_samples(X), expected.score_samples(X), rtol=1e-5)
    assert loaded.offset_ == pytest.approx(expected.offset_, rel=1e-5)
    # ... and says so when it leaves images out.
    out = folders / "again.skan"
    assert main(["fit", "--detector", "cae", *CAE_PARAMS, "--train", str(folders / "train"),
                 "--out", str(out)]) == 0
    assert "training on its 30 normal images (label 0), leaving out 5 abnormal" in capsys.readouterr().err


def test_score_writes_the_python_api_scores_and_maps(folders, model_path, tmp_path):
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    one_file = folders / "test" / "NORMAL" / sorted(p.name for p in (folders / "test" / "NORMAL").iterdir())[0]
    code = main(["score", str(model_path), str(folders / "test"), str(one_file), "--out", str(out),
                 "--maps", str(maps), "--batch-size", "5", "-q"])
    assert code == 0
    rows = _read_rows(out)
    paths = [Path(r["path"]) for r in rows]
    assert len(paths) == 24 and len(set(paths)) == 24  # the folder (recursive), no duplicate
    model = load_model(model_path)
    X = load_images(paths)
    scores = np.array([float(r["score"]) for r in rows])
    # --batch-size 5 groups the float32 reductions differently from the default batch
    # (an ulp or so on some CPUs): the detector's own float32 tolerance, not equality.
    rtol = get_detector_tags(model).score_tolerance.rtol
    np.testing.assert_allclose(scores, model.score_samples(X), rtol=rtol)
    model.set_params(batch_size=5)
    np.testing.assert_allclose([float(r["decision"]) for r in rows], model.decision_function(X), atol=1e-12)
    np.testing.assert_array_equal([int(r["prediction"]) for r in rows], model.predict(X))
    names = [r["map"] for r in rows]
    assert sorted(p.name for p in maps.iterdir()) == sorted(names)
    overlay = np.asarray(Image.open(maps / names[0]))
    assert overlay.shape[0] == 32 and overlay.shape[1] > 32 and overlay.dtype == np.uint8  # + colour bar
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_score_in_chunks_writes_the_same_csv(folders, model_path, tmp_path):
    """--chunk-size hands the files to skanomaly.parallel.score_files: same rows."""
    whole, chunked = tmp_path / "whole.csv", tmp_path / "chunked.csv"
    assert main(["score", str(model_path), str(folders / "test"), "--out", str(whole), "-q"]) == 0
    assert main(["score", str(model_path), str(folders / "test"), "--out", str(chunked),
                 "--chunk-size", "5", "-q"]) == 0
    a, b = _read_rows(whole), _read_rows(chunked)
    assert [r["path"] for r in a] == [r["path"] for r in b]
    np.testing.assert_allclose([float(r["score"]) for r in a], [float(r["score"]) for r in b], rtol=1e-6)
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]


def test_evaluate_reports_metrics_recomputed_from_the_score_csv(folders, model_path, tmp_path, capsys):
    report_dir = tmp_path / "report"
    code = main(["evaluate", str(model_path), "--data", str(folders / "test"), "--report", str(report_dir)])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((report_dir / "report.json").read_text())
    assert f"ROC AUC {report['roc_auc']:.4f}" in printed
    # Labels from the layout (NORMAL = 0, other class folders = 1), scores from `score`.
    main(["score", str(model_path), str(folders / "test"), "--out", str(tmp_path / "s.csv"), "-q"])
    rows = _read_rows(tmp_path / "s.csv")
    y = np.array([0 if Path(r["path"]).parent.name == "NORMAL" else 1 for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    assert report["roc_auc"] == pytest.approx(anomaly_roc_auc(y, scores), abs=1e-12)
    assert (report["n_normal"], report["n_abnormal"]) == (12, 12)
    flagged = np.array([int(r["prediction"]) for r in rows]) == -1
    assert report["sensitivity"] == pytest.approx(flagged[y == 1].mean())
    assert report["specificity"] == pytest.approx(1 - flagged[y == 0].mean())
    assert report["threshold"] == load_model(model_path).offset_
    png = (report_dir / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert len(_read_rows(report_dir / "scores.csv")) == 24
    # The exposure baseline beside the model, recomputed: films' (mean, std), normal
    # films each left out of their own fit.
    images = load_images([Path(r["path"]) for r in rows])
    normal = y == 0
    expected = np.empty(len(y))
    expected[normal] = intensity_baseline_scores(images[normal])
    expected[~normal] = intensity_baseline_scores(images[normal], images[~normal])
    assert report["exposure_baseline_roc_auc"] == pytest.approx(anomaly_roc_auc(y, expected), abs=1e-12)
    assert f"Exposure baseline (each film's mean and std only): ROC AUC {report['exposure_baseline_roc_auc']:.4f}" in printed


def test_fit_without_a_detector_trains_the_shift_robust_recipe(folders, tmp_path):
    """No --detector: the lung fields (after the steps given), opacities only; a
    --detector named is trained with its own defaults and no added step."""
    model = tmp_path / "default.skan"
    small = _params(base_channels=4, depth=2, max_epochs=1)
    assert main(["fit", *small, "--step", "Resize:size=32", "--train", str(folders / "train"),
                 "--out", str(model), "-q"]) == 0
    recipe = load_model(model)
    assert [type(step).__name__ for step in recipe[:-1]] == ["Resize", "LungMasker"]
    assert type(recipe[-1]).__name__ == DEFAULT_DETECTOR == "SyntheticAnomalyDetector"
    assert recipe[-1].anomaly_kinds == "opacity" and recipe[-1].net_.anomaly_kinds == ("opacity",)
    plain = tmp_path / "plain.skan"
    assert main(["fit", "--detector", "syntheticanomaly", *small, "--train", str(folders / "train"),
                 "--out", str(plain), "-q"]) == 0
    detector = load_model(plain)
    assert type(detector).__name__ == "SyntheticAnomalyDetector"
    assert detector.anomaly_kinds == SyntheticAnomalyDetector().anomaly_kinds


def test_csv_input_with_class_names_and_config_files(folders, tmp_path):
    """A CSV (relative paths, class-name labels) trains on its normal rows; a JSON and a
    YAML config give the same model as the flags."""
    listing = folders / "train_list.csv"  # beside the folders: its paths are relative to it
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Path", "label"])
        for p in sorted((folders / "train").rglob("*.png")):
            writer.writerow([p.relative_to(folders).as_posix(), p.parent.name.lower()])
    config = tmp_path / "cae.json"
    config.write_text(json.dumps({"detector": {"CAEDetector": {"channels": [4, 8], "max_epochs": 2, "lr": 2e-3}}}))
    pytest.importorskip("yaml")
    yaml_config = tmp_path / "cae.yaml"
    yaml_config.write_text("detector:\n  CAEDetector: {channels: [4, 8], max_epochs: 2, lr: 0.002}\n")
    for name, how in [("csv", ["--detector", "CAEDetector", *CAE_PARAMS]), ("json", ["--config", str(config)]),
                      ("yaml", ["--config", str(yaml_config)])]:
        assert main(["fit", *how, "--train", str(listing), "--out", str(tmp_path / f"{name}.skan"), "-q"]) == 0
    X = load_images(sorted((folders / "test").rglob("*.png")))
    reference = load_model(tmp_path / "csv.skan").score_samples(X)
    for name in ("json", "yaml"):
        np.testing.assert_array_equal(load_model(tmp_path / f"{name}.skan").score_samples(X), reference)


def test_pipeline_of_steps_round_trips_and_maps_come_back_at_image_size(folders, tmp_path):
    model = tmp_path / "pipe.skan"
    code = main(["fit", "--detector", "CAEDetector", *CAE_PARAMS, "--step", "Resize:size=24",
                 "--step", "clahe:kernel_size=8,clip_limit=0.02", "--train", str(folders / "train"),
                 "--out", str(model), "-q"])
    assert code == 0
    pipe = load_model(model)
    assert [type(step).__name__ for _, step in pipe.steps] == ["Resize", "CLAHE", "CAEDetector"]
    assert pipe[1].kernel_size == 8 and pipe[-1].image_shape_ == (24, 24)
    assert main(["score", str(model), str(folders / "test"), "--out", str(tmp_path / "s.csv"),
                 "--maps", str(tmp_path / "maps"), "-q"]) == 0
    rows = _read_rows(tmp_path / "s.csv")
    X = load_images([r["path"] for r in rows])
    np.testing.assert_array_equal([float(r["score"]) for r in rows], pipe.score_samples(X))
    overlay = np.asarray(Image.open(tmp_path / "maps" / rows[0]["map"]))
    assert overlay.shape[0] == 32 and overlay.shape[1] > 32  # the file's 32 px, then the bar


def test_parse_value_reads_literals_and_never_evaluates_code():
    assert cli.parse_value("16,32,64") == (16, 32, 64)
    assert cli.parse_value("('topk', 5)") == ("topk", 5)
    assert cli.parse_value("[1, [2, 3]]") == (1, (2, 3))
    assert cli.parse_value("2e-3") == 0.002
    assert cli.parse_value("true") is True and cli.parse_value("None") is None
    assert cli.parse_value("mse") == "mse"
    assert cli.parse_value("__import__('os').system('echo hi')") == "__import__('os').system('echo hi')"
    assert cli._split_assignments("clip_limit=0.02,kernel_size=(8, 8)") == ["clip_limit=0.02", "kernel_size=(8, 8)"]


def _tampered(model_path, tmp_path):
    data = bytearray(model_path.read_bytes())
    data[-10] ^= 0xFF  # a weight byte: the SHA-256 check fails
    path = tmp_path / "tampered.skan"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unknown_detector", f"invalid choice: 'Nope' (choose from {', '.join(map(repr, sorted(detectors.__all__)))})"),
        ("unknown_step", "unknown step 'Blur' (choose from CLAHE"),
        ("unknown_param", "CAEDetector has no parameter 'foo' (choose from channels"),
        ("bad_param_value", "The 'lr' parameter of CAEDetector"),
        ("missing_step_param", "step Resize needs size=..."),
        ("missing_folder", "--train"),
        ("zero_batch_size", "argument --batch-size: expected a positive integer, got '0'"),
        ("unknown_device", "device='tpu' is not a valid device"),
        ("yaml_without_pyyaml", "needs pyyaml"),
        ("out_folder_missing", "does not exist"),
        ("unreadable_model", "is not a readable skanomaly model file"),
        ("tampered_model", "failed its integrity check"),
        ("unlabelled_evaluate", "has no labels"),
        ("save_fails_after_training", "disk full"),
    ],
)
def test_bad_values_exit_2_with_one_line_and_leave_nothing(case, expected, folders, model_path, tmp_path,
                                                           capsys, monkeypatch):
    train, test = str(folders / "train"), str(folders / "test")
    out = tmp_path / "out"
    out.mkdir()
    fit = ["fit", "--detector", "CAEDetector", *CAE_PARAMS, "--train", train, "--out", str(out / "m.skan")]
    score = ["score", str(model_path), test, "--out", str(out / "s.csv"), "--maps", str(out / "maps")]
    if case == "yaml_without_pyyaml":
        monkeypatch.setitem(sys.modules, "yaml", None)
        (tmp_path / "c.yaml").write_text("detector: CAEDetector\n")
    if case == "save_fails_after_training":
        def full(*args, **kwargs):
            Path(args[1]).write_bytes(b"partial")
            raise OSError("disk full")
        monkeypatch.setattr("skanomaly.io.save_model", full)
    argv = {
        "unknown_detector": ["fit", "--detector", "Nope", "--train", train, "--out", str(out / "m.skan")],
        "unknown_step": fit + ["--step", "Blur"],
        "unknown_param": fit + ["--param", "foo=1"],
        "bad_param_value": fit + ["--param", "lr=-1"],
        "missing_step_param": fit + ["--step", "resize"],
        "missing_folder": fit[:-4] + ["--train", str(tmp_path / "nope"), "--out", str(out / "m.skan")],
        "zero_batch_size": fit + ["--batch-size", "0"],
        "unknown_device": score + ["--device", "tpu"],
        "yaml_without_pyyaml": ["fit", "--config", str(tmp_path / "c.yaml"), "--train", train, "--out",
                                str(out / "m.skan")],
        "out_folder_missing": score[:3] + ["--out", str(out / "no" / "s.csv")],
        "unreadable_model": ["score", str(next((folders / "test" / "NORMAL").iterdir())), test,
                             "--out", str(out / "s.csv")],
        "tampered_model": ["score", str(_tampered(model_path, tmp_path)), *score[2:]],
        "unlabelled_evaluate": ["evaluate", str(model_path), "--data", str(folders / "test" / "NORMAL"),
                                "--report", str(out / "report")],
        "save_fails_after_training": fit + ["-q"],
    }[case]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("skanomaly ") and ": error: " in err
    assert expected in err and "Traceback" not in err
    assert list(out.iterdir()) == []  # no output, no temporary file


def test_demo_failing_after_training_leaves_no_folder(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("no figure today")

    monkeypatch.setattr("skanomaly.plotting.plot_anomaly_overlays", broken)
    code = main(["demo", "--out", str(tmp_path / "demo"), "--n-train", "20", "--n-test", "10", "--epochs", "1", "-q"])
    assert code == 2 and "no figure today" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------- class folders, interrupts
def _class_layout(root, names):
    normal = make_chest_phantoms(6, image_size=32, anomaly_fraction=0.0, random_state=0)
    sick = make_chest_phantoms(4, image_size=32, anomaly_fraction=1.0, random_state=2)
    for i, image in enumerate(normal.images):
        _save_png(root / names[0], f"n{i:03d}.png", image)
    for i, image in enumerate(sick.images):
        _save_png(root / names[1], f"a{i:03d}.png", image)
    return root


def test_class_folders_without_a_normal_one_are_refused_not_pooled(tmp_path, capsys):
    data = _class_layout(tmp_path / "data", ["HEALTHY", "PNEUMONIA"])
    out = tmp_path / "model.skan"
    assert main(["fit", "--detector", "cae", *CAE_PARAMS, "--train", str(data), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "HEALTHY/, PNEUMONIA/" in err and "--normal-class HEALTHY" in err
    assert not out.exists()
    # Named explicitly, the normal class trains alone.
    assert main(["fit", "--detector", "cae", *CAE_PARAMS, "--train", str(data), "--out", str(out),
                 "--normal-class", "healthy"]) == 0
    assert "training on its 6 normal images (label 0), leaving out 4 abnormal" in capsys.readouterr().err
    assert load_model(out).n_features_in_ == 32 * 32


def test_patient_subfolders_are_still_one_image_tree(tmp_path):
    data = _class_layout(tmp_path / "data", ["patient01", "patient02"])
    out = tmp_path / "model.skan"
    assert main(["fit", "--detector", "cae", *CAE_PARAMS, "--train", str(data), "--out", str(out), "-q"]) == 0


# The net of the last training stage, where a detector has several.
LAST_STAGE_NET = {"FAnoGANDetector": "EncoderNet"}


@pytest.mark.parametrize("stage", ["first", "last"])
@pytest.mark.parametrize("name", sorted(detectors.__all__))
def test_ctrl_c_in_any_training_stage_exits_130_and_writes_nothing(name, stage, folders, tmp_path, monkeypatch,
                                                                    capsys):
    """The CLI's promise for every detector: an interrupted fit writes nothing, exit 130."""
    import signal

    from skorch import NeuralNet

    nets = []
    original = NeuralNet.notify

    def interrupt_during(self, method_name, **kwargs):
        original(self, method_name, **kwargs)
        if method_name == "on_batch_end" and kwargs.get("training"):
            nets.append(type(self).__name__)
            first = len(nets) == 1
            last = nets[-1] == LAST_STAGE_NET.get(name, nets[0]) and nets.count(nets[-1]) == 1
            if first if stage == "first" else last:
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(NeuralNet, "notify", interrupt_during)
    out = tmp_path / "model.skan"
    code = main(["fit", "--detector", name, *_cli_params(name, folders), "--train", str(folders / "train"),
                 "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 130, err
    assert "interrupted; nothing written" in err
    assert list(tmp_path.iterdir()) == []
    if stage == "last":
        assert LAST_STAGE_NET.get(name, nets[0]) in nets  # the interrupt reached that stage


@pytest.mark.parametrize("stage", ["masking", "training"])
def test_ctrl_c_in_the_default_recipe_exits_130_and_writes_nothing(stage, folders, tmp_path, monkeypatch, capsys):
    """Without --detector the CLI fits a pipeline (LungMasker, then the detector): an
    interrupt while the masker segments the films or while the detector trains behind
    it writes nothing."""
    import signal

    from skorch import NeuralNet

    from skanomaly.preprocessing import LungMasker

    reached = []
    if stage == "masking":
        original = LungMasker._transform_images

        def interrupt_during(self, images):
            reached.append(stage)
            signal.raise_signal(signal.SIGINT)
            return original(self, images)

        monkeypatch.setattr(LungMasker, "_transform_images", interrupt_during)
    else:
        original = NeuralNet.notify

        def interrupt_during(self, method_name, **kwargs):
            original(self, method_name, **kwargs)
            if method_name == "on_batch_end" and kwargs.get("training") and not reached:
                reached.append(stage)
                signal.raise_signal(signal.SIGINT)

        monkeypatch.setattr(NeuralNet, "notify", interrupt_during)
    out = tmp_path / "model.skan"
    code = main(["fit", *_params(base_channels=4, depth=2, max_epochs=1), "--train", str(folders / "train"),
                 "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert reached == [stage]
    assert code == 130, err
    assert "interrupted; nothing written" in err
    assert list(tmp_path.iterdir()) == []


def test_version_and_singular_messages(folders, tmp_path, capsys):
    import skanomaly

    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"skanomaly {skanomaly.__version__}"
    model = tmp_path / "model.skan"
    assert main(["fit", "--detector", "cae", *CAE_PARAMS, "--train", str(folders / "train"), "--out", str(model),
                 "-q"]) == 0
    one = tmp_path / "one"
    _save_png(one, "a.png", make_chest_phantoms(1, image_size=32, random_state=0).images[0])
    assert main(["score", str(model), str(one), "--out", str(tmp_path / "s.csv")]) == 0
    err = capsys.readouterr().err
    assert "Reading 1 image ..." in err and "1 images" not in err


# ------------------------------------------------------------------------ calibration
def test_calibrate_score_and_evaluate_at_a_guaranteed_false_alarm_rate(folders, model_path, tmp_path, capsys):
    from skanomaly.conformal import ConformalDetector

    normals = tmp_path / "site_b"
    for i, image in enumerate(make_chest_phantoms(40, image_size=32, anomaly_fraction=0.0, random_state=9).images):
        _save_png(normals, f"c{i:03d}.png", image)
    calibrated = tmp_path / "calibrated.skan"
    before = model_path.read_bytes()
    assert main(["calibrate", str(model_path), "--data", str(normals), "--out", str(calibrated),
                 "--alpha", "0.1"]) == 0
    assert "Calibrated on 40 normal images" in capsys.readouterr().err
    assert model_path.read_bytes() == before  # --out: the original is untouched
    model = load_model(calibrated)
    assert isinstance(model, ConformalDetector) and model.n_calibration_ == 40 and model.alpha == 0.1
    expected = ConformalDetector(load_model(model_path), calibration="prefit", alpha=0.1)
    expected.fit(load_images(sorted(normals.glob("*.png"))))
    np.testing.assert_array_equal(model.calibration_scores_, expected.calibration_scores_)

    # score: a p-value column, predictions at --alpha (overriding the model's alpha).
    out = tmp_path / "s.csv"
    assert main(["score", str(calibrated), str(folders / "test"), "--out", str(out), "--alpha", "0.2", "-q"]) == 0
    rows = _read_rows(out)
    X = load_images([Path(r["path"]) for r in rows])
    pvalues = np.array([float(r["pvalue"]) for r in rows])
    np.testing.assert_array_equal(pvalues, model.score_pvalues(X))
    np.testing.assert_array_equal([int(r["prediction"]) for r in rows], np.where(pvalues <= 0.2, -1, 1))
    assert main(["score", str(calibrated), str(folders / "test"), "--out", str(out), "--fdr", "0.3", "-q"]) == 0
    from skanomaly.conformal import benjamini_hochberg

    flagged = np.array([int(r["prediction"]) for r in _read_rows(out)]) == -1
    np.testing.assert_array_equal(flagged, benjamini_hochberg(pvalues, 0.3))

    # evaluate: the operating point and the measured false-alarm rate against alpha.
    report_dir = tmp_path / "report"
    capsys.readouterr()
    assert main(["evaluate", str(calibrated), "--data", str(folders / "test"), "--report", str(report_dir)]) == 0
    printed = capsys.readouterr().out
    point = json.loads((report_dir / "report.json").read_text())["operating_point"]
    y = np.array([0 if Path(r["path"]).parent.name == "NORMAL" else 1 for r in rows])
    far = float((pvalues[y == 0] <= 0.1).mean())
    assert point["rule"] == "alpha" and point["alpha"] == 0.1 and point["n_calibration"] == 40
    assert point["false_alarm_rate"] == pytest.approx(far)
    assert point["false_alarm_rate_95ci"][0] <= far <= point["false_alarm_rate_95ci"][1]
    assert f"alpha = 0.1: false-alarm rate {far:.3f} on 12 normal images" in printed
    assert "pvalue" in _read_rows(report_dir / "scores.csv")[0]

    # In place: calibrate MODEL replaces the calibration, keeps the networks.
    assert main(["calibrate", str(calibrated), "--data", str(folders / "train"), "-q"]) == 0
    again = load_model(calibrated)
    assert again.n_calibration_ == 30 and again.alpha == 0.1  # NORMAL/ only; the model's alpha
    np.testing.assert_array_equal(again.score_samples(X), model.score_samples(X))


def test_fit_with_calibration_holds_out_images(folders, tmp_path, capsys):
    out = tmp_path / "m.skan"
    assert main(["fit", "--detector", "cae", *CAE_PARAMS, "--train", str(folders / "train"), "--out", str(out),
                 "--calibration", "0.3", "--alpha", "0.2"]) == 0
    err = capsys.readouterr().err
    assert "holding out 9 to calibrate" in err and "flags p-value <= alpha = 0.2" in err
    model = load_model(out)
    assert model.n_calibration_ == 9 and model.alpha == 0.2 and model.estimator_.n_iter_ == 2


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["score", "{model}", "{test}", "--out", "{out}/s.csv", "--alpha", "0.1"], "has no calibration: run "
         "'skanomaly calibrate"),
        (["evaluate", "{model}", "--data", "{test}", "--fdr", "0.1"], "--fdr needs a calibrated model"),
        (["score", "{calibrated}", "{test}", "--out", "{out}/s.csv", "--fdr", "0.1", "--chunk-size", "4"],
         "Benjamini-Hochberg (--fdr, or the model's fdr) ranks all images together"),
        (["score", "{model}", "{test}", "--out", "{out}/s.csv", "--alpha", "1.5"], "expected a number in (0, 1)"),
        (["fit", "--detector", "cae", "--train", "{test}", "--out", "{out}/m.skan", "--alpha", "0.1"],
         "--alpha needs --calibration"),
        (["calibrate", "{model}", "--data", "{empty}", "--out", "{out}/m.skan"], "no image files"),
    ],
)
def test_calibration_options_refuse_what_cannot_hold(argv, expected, folders, model_path, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "empty").mkdir()
    calibrated = tmp_path / "calibrated.skan"
    assert main(["calibrate", str(model_path), "--data", str(folders / "train"), "--out", str(calibrated),
                 "-q"]) == 0
    fill = dict(model=model_path, test=folders / "test", out=out, calibrated=calibrated, empty=tmp_path / "empty")
    capsys.readouterr()
    assert main([arg.format(**fill) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert list(out.iterdir()) == []


def test_12_bit_pngs_get_command_line_advice_and_bits_stored_keeps_it_in_the_model(tmp_path, capsys):
    import cv2

    from skanomaly.preprocessing import Rescale

    folder = tmp_path / "b12"
    folder.mkdir()
    images = make_chest_phantoms(12, image_size=32, anomaly_fraction=0.0, random_state=0).images
    raw = np.round(images * 4095).astype(np.uint16)
    for i, pixels in enumerate(raw):
        cv2.imwrite(str(folder / f"{i:02d}.png"), pixels)
    plain, twelve = tmp_path / "plain.skan", tmp_path / "twelve.skan"
    capsys.readouterr()
    assert main(["fit", "--detector", "cae", *CAE_PARAMS, "--train", str(folder), "--out", str(plain)]) == 0
    err = capsys.readouterr().err
    advice = [line for line in err.splitlines() if "--bits-stored 12" in line]
    assert len(advice) == 1 and "12 files of 12 hold 16-bit pixels no larger than 4095" in advice[0]
    assert "warnings.warn" not in err and "UserWarning" not in err and "Rescale(bits_stored=12)" not in err
    assert main(["fit", "--detector", "cae", *CAE_PARAMS, "--train", str(folder), "--out", str(twelve),
                 "--bits-stored", "12"]) == 0
    assert "--bits-stored" not in capsys.readouterr().err  # the model now rescales: no advice
    model = load_model(twelve)
    first = model.steps[0][1]
    assert isinstance(first, Rescale) and (first.bits_stored, first.container_bits) == (12, 16)
    # The detector saw the 12-bit values divided by 4095, exactly as from raw arrays.
    expected = CAEDetector(channels=(4, 8), max_epochs=2, lr=2e-3, random_state=0, device="auto")
    expected.fit(Rescale(bits_stored=12).fit_transform(raw))
    np.testing.assert_allclose(model.score_samples(load_images(sorted(folder.glob("*.png")))),
                               expected.score_samples(Rescale(bits_stored=12).fit_transform(raw)), rtol=1e-5)
    assert main(["score", str(twelve), str(folder), "--out", str(tmp_path / "s.csv")]) == 0
    assert "--bits-stored" not in capsys.readouterr().err
    assert main(["score", str(plain), str(folder), "--out", str(tmp_path / "s.csv")]) == 0
    assert "refit with --bits-stored 12" in capsys.readouterr().err


def test_a_damaged_jpeg_is_named_not_scored(model_path, folders, tmp_path, capsys):
    import cv2

    folder = tmp_path / "films"
    folder.mkdir()
    image = np.round(255 * make_chest_phantoms(1, image_size=32, random_state=0).images[0]).astype(np.uint8)
    data = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    (folder / "good.jpg").write_bytes(bytes(data))
    data[len(data) // 2:len(data) // 2 + 2] = b"\xff\xd9"
    (folder / "bad.jpg").write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["score", str(model_path), str(folder), "--out", str(out / "s.csv")]) == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if "error" in line]
    assert len(error) == 1 and "bad.jpg' is a damaged JPEG" in error[0]
    assert list(out.iterdir()) == []


def test_maps_are_written_at_the_files_size_with_a_colour_bar(folders, tmp_path):
    """A model fitted at 32 px (--size 32) on 48x40 files writes 48x40 overlays."""
    from skanomaly.datasets import read_image

    big = tmp_path / "big"
    data = make_chest_phantoms(12, image_size=48, anomaly_fraction=0.0, random_state=5)
    for i, image in enumerate(data.images):
        _save_png(big, f"b{i:02d}.png", image[:, 4:44])  # 48 high, 40 wide
    model = tmp_path / "m.skan"
    assert main(["fit", "--detector", "cae", *CAE_PARAMS, "--train", str(big), "--size", "32",
                 "--out", str(model), "-q"]) == 0
    maps = tmp_path / "maps"
    assert main(["score", str(model), str(big), "--out", str(tmp_path / "s.csv"), "--maps", str(maps),
                 "-q"]) == 0
    row = _read_rows(tmp_path / "s.csv")[0]
    overlay = np.asarray(Image.open(maps / row["map"]))
    assert overlay.shape[0] == 48 and overlay.shape[1] > 40 + 8
    # Left: the file's own pixels under the map (gray where the map is not drawn is
    # impossible to tell apart here, so compare the brightness pattern); right: the
    # bar, whose top (vmax) and bottom (vmin) colours differ.
    source = read_image(Path(row["path"]))
    brightness = overlay[:, :40].mean(axis=2)
    assert np.corrcoef(brightness.ravel(), source.ravel())[0, 1] > 0.5
    bar = overlay[:, 40:]
    coloured = np.flatnonzero((bar.max(axis=2) - bar.min(axis=2) > 40).all(axis=0) |
                              (np.ptp(bar.astype(int).sum(axis=2), axis=0) > 200))
    assert coloured.size > 0
    column = bar[:, coloured[0]].astype(int)
    assert np.abs(column[1] - column[-2]).sum() > 200


def test_a_semi_supervised_detector_takes_its_unlabelled_mix_and_no_other_does(folders, tmp_path, capsys):
    model = tmp_path / "hg.skan"
    train = str(folders / "train")
    healthygan = ["fit", "--detector", "healthygan", *_params(generator_width=2, n_residual_blocks=1,
                  critic_width=2, max_iter=2), "--train", train, "--out", str(model)]
    assert main(healthygan) == 2
    assert "--unlabelled DIR_OR_CSV (an unlabelled mix" in capsys.readouterr().err
    assert main([*healthygan, "--unlabelled", train, "--calibration", "0.2"]) == 2
    assert "skanomaly calibrate" in capsys.readouterr().err
    assert main(["fit", "--detector", "cae", *CAE_PARAMS, "--train", train, "--unlabelled", train,
                 "--out", str(model)]) == 2
    assert "CAEDetector trains on normal images only" in capsys.readouterr().err
    assert not model.exists()
    assert main([*healthygan, "--unlabelled", train]) == 0
    err = capsys.readouterr().err
    assert "training on its 30 normal images" in err and "Unlabelled mix: 35 images" in err
    fitted = load_model(model)
    assert (fitted.n_normal_, fitted.n_unlabelled_) == (30, 35)
