"""skanomaly.parallel.score_files, in-process and on a Dask LocalCluster, and
GridSearchCV on Dask through joblib, all on phantoms with tiny detectors.

The Dask tests share one module-scoped LocalCluster (2 worker processes, 1 thread
each; about 2 s to start, workers import torch on their first task) and skip when
``dask[distributed]`` is not installed (``pip install skanomaly[dask]``).
"""

import csv
import logging
import time

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from skanomaly.datasets import load_images, make_chest_phantoms
from skanomaly.detectors import CAEDetector
from skanomaly.metrics import roc_auc_anomaly_scorer
from skanomaly.parallel import FileScores, score_files
from skanomaly.preprocessing import Resize

FAST = dict(channels=(4, 8), max_epochs=2, batch_size=8, augment=None, random_state=0)


@pytest.fixture
def one_torch_thread():
    """Run the test's in-process work on one torch thread, as Dask workers do.

    Training is deterministic for a given ``random_state`` *and* number of torch
    threads (a parallel reduction may sum in another order); the workers run one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def detector():
    train = make_chest_phantoms(24, image_size=16, anomaly_fraction=0.0, random_state=0)
    return CAEDetector(**FAST).fit(train.images)


@pytest.fixture(scope="module")
def pipeline():
    train = make_chest_phantoms(24, image_size=24, anomaly_fraction=0.0, random_state=0)
    return make_pipeline(Resize((16, 16)), CAEDetector(**FAST)).fit(train.images)


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """11 phantom PNGs: 8-bit at 24 px and 16-bit at 20 px, abnormal ones among them."""
    folder = tmp_path_factory.mktemp("pngs")
    phantoms = make_chest_phantoms(11, image_size=24, anomaly_fraction=0.5, random_state=3)
    for i, image in enumerate(phantoms.images):
        if i % 2:
            small = Image.fromarray(np.round(image * 65535).astype(np.uint16)).resize((20, 20))
            pixels = np.asarray(small, dtype=np.uint16)  # a genuine 16-bit PNG
            Image.fromarray(pixels).save(folder / f"film_{i:02d}.png")
        else:
            pixels = np.round(image * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"film_{i:02d}.png")
    return folder


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


# ------------------------------------------------------------------- in-process
def test_scores_match_the_model_on_loaded_images(detector, png_folder, tmp_path):
    out = tmp_path / "scores.csv"
    result = score_files(detector, png_folder, size=16, chunk_size=4, out=out, progress=False)
    assert isinstance(result, FileScores) and result.out == out and result.skipped == []
    images = load_images(png_folder, size=16)
    np.testing.assert_array_equal(result.scores, detector.score_samples(images))
    np.testing.assert_array_equal(result.decisions, detector.decision_function(images))
    np.testing.assert_array_equal(result.predictions, detector.predict(images))
    rows = _rows(out)
    assert rows[0] == ["path", "score", "decision", "prediction"]
    assert [r[0] for r in rows[1:]] == [str(p) for p in sorted(png_folder.iterdir())]
    # The CSV holds the float64 values exactly.
    np.testing.assert_array_equal([float(r[1]) for r in rows[1:]], result.scores)
    np.testing.assert_array_equal([int(r[3]) for r in rows[1:]], result.predictions)
    assert set(result.predictions) <= {-1, 1}


def test_pipeline_scores_files_of_mixed_sizes(pipeline, png_folder):
    # size=None: the 24 px and 20 px files are scored in groups of equal size and the
    # pipeline's Resize brings both to the detector's 16 px.
    paths = sorted(png_folder.iterdir())
    result = score_files(pipeline, paths, chunk_size=5, progress=False)
    expected = [pipeline.score_samples(load_images([p]))[0] for p in paths]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-6)
    np.testing.assert_allclose(result.decisions, result.scores - pipeline[-1].offset_)


def test_csv_does_not_depend_on_chunk_size(detector, png_folder, tmp_path):
    results = {}
    for chunk_size in (1, 3, 100):
        out = tmp_path / f"c{chunk_size}.csv"
        score_files(detector, png_folder, size=16, chunk_size=chunk_size, out=out, progress=False)
        results[chunk_size] = _rows(out)
    for chunk_size in (3, 100):
        rows = results[chunk_size]
        assert [(r[0], r[3]) for r in rows] == [(r[0], r[3]) for r in results[1]]
        np.testing.assert_allclose(
            [float(r[1]) for r in rows[1:]], [float(r[1]) for r in results[1][1:]], rtol=1e-6
        )


def _damaged_paths(png_folder, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a PNG at all")
    paths = sorted(png_folder.iterdir())
    return paths[:3] + [tmp_path / "missing.png"] + paths[3:6] + [corrupt] + paths[6:]


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_unreadable_file_raises_and_writes_nothing(detector, png_folder, tmp_path, chunk_size):
    paths = _damaged_paths(png_folder, tmp_path)
    out = tmp_path / "scores.csv"
    with pytest.raises(ValueError, match="could not read .*missing.png.* does not exist"):
        score_files(detector, paths, size=16, chunk_size=chunk_size, out=out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.png"]  # no CSV, no temp file
    with pytest.raises(ValueError, match="could not read .*corrupt.png"):
        score_files(detector, paths[4:], size=16, chunk_size=chunk_size, out=out, progress=False)
    assert not out.exists()


def test_skip_records_unreadable_files(detector, png_folder, tmp_path):
    paths = _damaged_paths(png_folder, tmp_path)
    out = tmp_path / "scores.csv"
    with pytest.warns(UserWarning, match="skipped 2 of 13 files .*missing.png"):
        result = score_files(
            detector, paths, size=16, chunk_size=4, out=out, on_error="skip", progress=False
        )
    assert [p for p, _ in result.skipped] == [str(paths[3]), str(paths[7])]
    assert "does not exist" in result.skipped[0][1]
    good = [i for i in range(13) if i not in (3, 7)]
    expected = detector.score_samples(load_images(png_folder, size=16))
    np.testing.assert_array_equal(result.scores[good], expected)
    assert np.isnan(result.scores[[3, 7]]).all() and (result.predictions[[3, 7]] == 0).all()
    rows = _rows(out)
    assert rows[0] == ["path", "score", "decision", "prediction", "error"]
    assert len(rows) == 14 and [r[0] for r in rows[1:]] == [str(p) for p in paths]
    assert rows[4][1:4] == ["", "", ""] and "does not exist" in rows[4][4]
    assert all(r[4] == "" for i, r in enumerate(rows[1:]) if i in good)


def test_bad_input_is_refused(detector, png_folder, tmp_path):
    path = sorted(png_folder.iterdir())[0]
    with pytest.raises(ValueError, match="empty list of paths"):
        score_files(detector, [], progress=False)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            score_files(detector, [path], chunk_size=bad, progress=False)
    with pytest.raises(ValueError, match="on_error must be 'raise'"):
        score_files(detector, [path], on_error="ignore", progress=False)
    with pytest.raises(ValueError, match="size must be None"):
        score_files(detector, [path], size=0, progress=False)
    with pytest.raises(ValueError, match="does not exist; create it first"):
        score_files(detector, [path], out=tmp_path / "nowhere" / "s.csv", progress=False)
    with pytest.raises(ValueError, match="not pixel data"):
        score_files(detector, np.zeros((2, 16, 16)), progress=False)
    with pytest.raises(NotFittedError):
        score_files(CAEDetector(**FAST), [path], progress=False)
    with pytest.raises(NotFittedError):
        score_files(make_pipeline(Resize((16, 16)), CAEDetector(**FAST)), [path], progress=False)
    with pytest.raises(ValueError, match="needs a fitted outlier detector"):
        score_files(Resize((16, 16)).fit(np.zeros((2, 16, 16))), [path], progress=False)
    with pytest.raises(ValueError, match="client must be a dask.distributed.Client"):
        score_files(detector, [path], client="localhost:8786", progress=False)
    # A model error (wrong image size) is not a file error: it raises even with skip.
    with pytest.raises(ValueError, match="fitted on 16x16"):
        score_files(detector, [path], on_error="skip", out=tmp_path / "s.csv", progress=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- Dask
def test_workers_use_one_torch_thread(client):
    # The nanny starts workers with OMP_NUM_THREADS=1 (Dask's default), so two
    # single-threaded workers share two cores without oversubscription.
    assert set(client.run(torch.get_num_threads).values()) == {1}


@pytest.mark.parametrize("model_name", ["detector", "pipeline"])
def test_cluster_writes_the_same_csv_as_in_process(
    client, request, model_name, png_folder, tmp_path
):
    model = request.getfixturevalue(model_name)
    paths = _damaged_paths(png_folder, tmp_path)  # two unreadable files on the way
    size = 16 if model_name == "detector" else None
    written = {}
    for where, use in (("local", None), ("cluster", client)):
        out = tmp_path / f"{where}.csv"
        with pytest.warns(UserWarning, match="skipped 2 of 13"):
            score_files(
                model, paths, client=use, size=size, chunk_size=3, out=out,
                on_error="skip", progress=False,
            )
        written[where] = out.read_bytes()
    assert written["cluster"] == written["local"]
    assert written["local"].count(b"\n") == 14
    # The scattered model and every chunk's result are released afterwards (the
    # scheduler forgets them asynchronously).
    deadline = time.monotonic() + 10
    while client.who_has() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.who_has() == {}


def test_cluster_error_propagates_and_writes_nothing(client, detector, png_folder, tmp_path):
    paths = _damaged_paths(png_folder, tmp_path)
    out = tmp_path / "scores.csv"
    with pytest.raises(ValueError, match="could not read .*missing.png"):
        score_files(detector, paths, client=client, size=16, chunk_size=2, out=out, progress=False)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_grid_search_on_dask_matches_sequential(client, one_torch_thread):
    data = make_chest_phantoms(24, image_size=24, anomaly_fraction=0.5, random_state=5)
    X, y = data.images, data.labels
    splitter = StratifiedKFold(2, shuffle=True, random_state=0)
    folds = [(tr[y[tr] == 0], va) for tr, va in splitter.split(X, y)]
    pipe = make_pipeline(Resize((16, 16)), CAEDetector(**FAST))
    grid = {"caedetector__lr": [1e-3, 1e-2], "caedetector__channels": [(4,), (4, 8)]}

    # ROC AUC (rank-based) of such tiny models ties easily; the mean validation score
    # shows every last bit of the weights. A local function is pickled by value.
    scoring = {
        "auc": roc_auc_anomaly_scorer,
        "mean": lambda est, X, y: float(np.mean(est.score_samples(X))),
    }

    def search(n_jobs):
        search = GridSearchCV(pipe, grid, cv=folds, scoring=scoring, refit=False, n_jobs=n_jobs)
        return search.fit(X, y)

    sequential = search(1)
    with joblib.parallel_config(backend="dask"):
        on_dask = search(-1)
    keys = ["params"] + [
        f"{stat}_test_{metric}"
        for metric in scoring
        for stat in ("mean", "std", "rank", "split0", "split1")
    ]
    for key in keys:
        assert list(on_dask.cv_results_[key]) == list(sequential.cv_results_[key]), key
    # Four candidates are not all alike: the comparison is not vacuous.
    assert len(set(sequential.cv_results_["mean_test_mean"])) == 4
