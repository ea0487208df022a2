"""The papers' whole chains as scikit-learn pipelines, end to end on phantoms."""

import joblib
import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import CAEDetector
from skanomaly.preprocessing import CLAHE, LungMasker, PatchExtractor


@pytest.fixture(scope="module")
def chain():
    """CLAHE -> lung ROI -> patch bags -> CAE, the P-AnoGAN preprocessing in front of a detector."""
    train = make_chest_phantoms(40, image_size=64, anomaly_fraction=0.0, random_state=0)
    pipe = Pipeline(
        [
            ("clahe", CLAHE(kernel_size=0.25)),
            ("lungs", LungMasker()),
            ("patch", PatchExtractor(16, stride=8)),
            ("det", CAEDetector(channels=(8, 16), augment=None, max_epochs=2, random_state=0)),
        ]
    )
    return pipe.fit(train.images)


@pytest.fixture(scope="module")
def test_set():
    return make_chest_phantoms(8, image_size=64, anomaly_fraction=0.5, random_state=1)


def test_chain_scores_every_image(chain, test_set):
    scores = chain.score_samples(test_set.images)
    assert scores.shape == (8,) and np.isfinite(scores).all()
    assert set(chain.predict(test_set.images)) <= {-1, 1}
    np.testing.assert_allclose(chain.decision_function(test_set.images), scores - chain[-1].offset_)


def test_chain_patch_maps_stitch_back_to_lung_pixels(chain, test_set):
    bags = chain[:-1].transform(test_set.images)
    assert bags.shape[1:] == (49, 16, 16)  # 7 x 7 grid of 16 px patches, stride 8
    patch_maps = chain[-1].anomaly_map(bags)
    assert patch_maps.shape == bags.shape
    pixel_maps = chain.named_steps["patch"].inverse_transform(patch_maps)
    assert pixel_maps.shape == test_set.images.shape
    # A pixel has an anomaly value exactly where some kept patch saw it inside the lungs.
    seen = ~np.isnan(chain.named_steps["patch"].inverse_transform(bags))
    np.testing.assert_array_equal(~np.isnan(pixel_maps), seen)
    lungs = LungMasker(output="mask").fit_transform(chain[:1].transform(test_set.images))
    assert not seen[~lungs].any()
    assert np.nanmin(pixel_maps) >= 0


def test_chain_round_trips_through_joblib(chain, test_set, tmp_path):
    path = tmp_path / "chain.joblib"
    joblib.dump(chain, path)
    restored = joblib.load(path)
    np.testing.assert_array_equal(restored.score_samples(test_set.images), chain.score_samples(test_set.images))
