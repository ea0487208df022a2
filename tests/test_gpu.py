"""GPU paths: skipped on machines without CUDA (CI has none)."""

import pickle
from unittest import mock

import numpy as np
import pytest
import torch

from skanomaly.detectors import AnoGANDetector, CAEDetector, FAnoGANDetector, VAEDetector

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("detector", [CAEDetector(channels=(4, 8)), VAEDetector(channels=(4,), latent_dim=4)])
def test_trains_on_gpu_and_loads_on_cpu_only_machine(detector):
    X = np.random.default_rng(0).random((40, 16, 16)).astype(np.float32)
    detector.set_params(device="cuda", max_epochs=2, random_state=0)
    detector.fit(X)
    assert next(detector.net_.module_.parameters()).is_cuda
    gpu_scores = detector.score_samples(X)
    buffer = pickle.dumps(detector)
    with mock.patch("torch.cuda.is_available", lambda: False):
        loaded = pickle.loads(buffer)
        cpu_scores = loaded.score_samples(X)
    np.testing.assert_allclose(cpu_scores, gpu_scores, rtol=1e-4, atol=1e-6)


def test_auto_device_picks_cuda():
    X = np.random.default_rng(0).random((20, 16, 16)).astype(np.float32)
    det = CAEDetector(channels=(4,), max_epochs=1).fit(X)
    assert str(det.net_.device).startswith("cuda")


@pytest.mark.parametrize(
    "detector",
    [
        AnoGANDetector(channels=(4, 8), latent_dim=4, n_search_steps=5, batch_size=8),
        FAnoGANDetector(encoder="resnet18", gan_channels=(8, 8, 8), latent_dim=4, gan_iterations=9, batch_size=8),
        FAnoGANDetector(generator="wgan-gp", encoder="critic", gan_channels=(8, 8, 8), latent_dim=4,
                        gan_iterations=10, batch_size=8),
    ],
)
def test_gan_detectors_train_on_gpu_and_load_on_cpu_only_machine(detector):
    X = np.random.default_rng(0).random((32, 16, 16)).astype(np.float32)
    detector.set_params(device="cuda", max_epochs=2, random_state=0).fit(X)
    assert all(
        next(module.parameters()).is_cuda for module in detector._torch_modules().values()
        if next(module.parameters(), None) is not None
    )
    gpu_scores = detector.score_samples(X)
    buffer = pickle.dumps(detector)
    with mock.patch("torch.cuda.is_available", lambda: False):
        cpu_scores = pickle.loads(buffer).score_samples(X)
    np.testing.assert_allclose(cpu_scores, gpu_scores, rtol=1e-3, atol=1e-5)

