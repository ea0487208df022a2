"""GPU paths: skipped on machines without CUDA (CI has none)."""

import pickle
from unittest import mock

import numpy as np
import pytest
import torch

from skanomaly.detectors import CAEDetector, VAEDetector

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
