"""Progress of training stages: every stage of every detector says what it does."""

import pickle

import numpy as np
import pytest

from skanomaly.detectors import CAEDetector, FAnoGANDetector
from skanomaly.training import progress
from skanomaly.training.progress import StageProgress


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((20, 16, 16), dtype=np.float32)


def test_every_stage_shows_its_name_iterations_of_the_total_and_losses(images, capsys):
    FAnoGANDetector(encoder="critic", gan_channels=(4, 4, 4), latent_dim=4, gan_iterations=6, gan_batch_size=8,
                    max_epochs=2, batch_size=8, verbose=1, random_state=0).fit(images)
    err = capsys.readouterr().err
    # The GAN stage runs its MaxIter budget; the encoder stage 2 epochs of 3 batches.
    assert "FAnoGANDetector GAN stage" in err and "6/6" in err
    assert "FAnoGANDetector encoder stage" in err and "6/6" in err
    assert "loss_d=" in err and "loss=" in err  # the critic's and the generator's terms


def test_a_single_stage_detector_counts_epochs_times_batches(images, capsys):
    CAEDetector(channels=(4,), max_epochs=3, batch_size=8, augment=None, verbose=1, random_state=0).fit(images)
    err = capsys.readouterr().err
    assert "CAEDetector" in err and "9/9" in err  # 3 epochs x ceil(20 / 8)


def test_a_stage_projected_to_take_hours_on_the_cpu_says_so_once_with_the_fix(images, monkeypatch):
    monkeypatch.setattr(progress, "LONG_STAGE_SECONDS", 0.0)
    detector = CAEDetector(channels=(4,), max_epochs=2, batch_size=8, augment=None, random_state=0,
                           callbacks=[StageProgress("CAE", hint="Use max_epochs=2.", disable=True,
                                                    check_after_seconds=0.0)])
    with pytest.warns(UserWarning, match=r"CAE: 6 iterations at .* s each will take about .* h on this CPU\. "
                                         r"Use max_epochs=2\.") as record:
        detector.fit(images)
    assert len([w for w in record if "will take about" in str(w.message)]) == 1


def test_a_fitted_detector_carries_no_progress_bar(images):
    detector = CAEDetector(channels=(4,), max_epochs=1, batch_size=8, augment=None, verbose=1, random_state=0)
    detector.fit(images)
    restored = pickle.loads(pickle.dumps(detector))
    callback = dict(restored.net_.callbacks_)["progress"]
    assert getattr(callback, "bar_", None) is None
    np.testing.assert_array_equal(restored.score_samples(images), detector.score_samples(images))
