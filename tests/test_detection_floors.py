"""Every detector detects nodules on synthetic phantoms above a measured AUC floor.

The floors of most detectors live with their other tests (``tests/detectors/``);
``FLOOR_TESTS`` names each one, and a registered detector without a floor test fails
here, as one without fast settings fails in ``test_common.py``.
"""

import ast
from pathlib import Path

import pytest

from skanomaly import detectors
from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import FAnoGANDetector
from skanomaly.metrics import anomaly_roc_auc

TESTS = Path(__file__).resolve().parent

FLOOR_TESTS = {
    "CAEDetector": "detectors/test_autoencoders.py::test_cae_detects_nodules_on_held_back_phantoms",
    "VAEDetector": "detectors/test_autoencoders.py::test_vae_detects_nodules_on_held_back_phantoms",
    "AnoGANDetector": "detectors/test_anogan.py::test_detects_nodules_on_phantoms",
    "FAnoGANDetector": "test_detection_floors.py::test_fanogan_detects_nodules_on_phantoms",
    "OneClassAdversarialDetector": "detectors/test_oneclass.py::test_the_full_model_beats_a_measured_floor_on_phantoms",
    "BiGANDetector": "detectors/test_bigan.py::test_detects_nodules_on_phantoms_above_a_measured_floor",
    "AlphaGANDetector": "detectors/test_alphagan.py::test_detects_nodules_on_phantoms_above_a_measured_floor",
    "SyntheticAnomalyDetector": "detectors/test_synthetic.py::test_detects_nodules_on_phantoms_above_a_measured_floor",
    # A strict xfail: no CPU budget reaches it yet (its reason gives the figures).
    "HealthyGAN": "detectors/test_healthygan.py::test_masks_concentrate_on_nodules_and_the_score_beats_a_floor",
}


@pytest.mark.parametrize("name", sorted(detectors.__all__))
def test_every_detector_has_a_phantom_auc_floor(name):
    assert name in FLOOR_TESTS, f"{name} has no phantom AUC floor test: add one and name it in FLOOR_TESTS"
    path, function = FLOOR_TESTS[name].split("::")
    source = (TESTS / path).read_text()
    found = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef) and node.name == function]
    assert found, f"{FLOOR_TESTS[name]} does not exist"
    body = ast.get_source_segment(source, found[0])
    assert "anomaly_roc_auc" in body and "assert" in body, f"{FLOOR_TESTS[name]} asserts no AUC"


def test_fanogan_detects_nodules_on_phantoms():
    # 16 px phantoms, a three-scale progressive GAN trained for 700 iterations (0.1 % of
    # P-AnoGAN's schedule; the GAN is nearly all of the 35-50 s on one core), the
    # critic encoder. At this budget G(E(x)) is a blurred phantom, so the pixel
    # residual does not see 1-2 px nodules (izizf 0.51-0.57, residual 0.49-0.55 over
    # seeds 0, 1, 2): the detection is in the critic's features, hence f-AnoGAN's izif
    # score with a large kappa. Measured izif AUC, seeds 0 / 1 / 2: 0.665 / 0.588 /
    # 0.579 (these settings); at 1000 iterations 0.644 / 0.576 / 0.594 (kappa 100),
    # 0.638 / 0.567 / 0.600 (kappa 20), 0.613 / 0.540 / 0.579 (kappa 1). The floor is
    # below the lowest seed with margin; a detector at chance passes it about one time
    # in nine (200 test images, standard error 0.04).
    train = make_chest_phantoms(200, image_size=16, anomaly_fraction=0.0, random_state=0)
    test = make_chest_phantoms(200, image_size=16, anomaly_fraction=0.5, random_state=1)
    det = FAnoGANDetector(
        encoder="critic", gan_channels=(32, 16, 8), latent_dim=64, gan_iterations=700, gan_lr=3e-3,
        feature_weight=100.0, anomaly_score="izif", max_epochs=10, batch_size=32, lr=1e-3, random_state=0,
    ).fit(train.images)
    assert anomaly_roc_auc(test.labels, det.score_samples(test.images)) > 0.55
