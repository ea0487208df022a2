import joblib
import numpy as np
import pytest
import torch
from imblearn.pipeline import make_pipeline as make_imblearn_pipeline
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import FAnoGANDetector
from skanomaly.detectors import _fanogan
from skanomaly.io import load_model, save_model
from skanomaly.metrics import anomaly_roc_auc
from skanomaly.model_selection import NormalOnly, get_scorer
from skanomaly.preprocessing import CLAHE, PatchExtractor
from skanomaly.training.stages import GANNet, MaxIter

TINY = dict(
    encoder="critic",
    gan_channels=(8, 8, 8),
    latent_dim=4,
    gan_iterations=12,
    gan_batch_size=8,
    max_epochs=2,
    batch_size=8,
    random_state=0,
)


@pytest.fixture(scope="module")
def images():
    return make_chest_phantoms(24, image_size=16, anomaly_fraction=0.0, random_state=0).images


@pytest.fixture(scope="module", params=["progressive", "wgan-gp"])
def fitted(request, images):
    return FAnoGANDetector(generator=request.param, **TINY).fit(images)


def test_defaults_are_p_anogan():
    det = FAnoGANDetector()
    assert (det.generator, det.encoder, det.loss, det.anomaly_score) == ("progressive", "resnet50", "izizf", "auto")
    assert (det.lr, det.batch_size, det.max_epochs, det.encoder_optimizer) == (1e-4, 64, 30, "adam")
    assert det.ema_decay == 0.999
    # The mission's headline pipeline is built as written.
    pipe = Pipeline(
        [("clahe", CLAHE()), ("patch", PatchExtractor(64)), ("det", FAnoGANDetector(loss="izizf", encoder="resnet50"))]
    )
    assert pipe.get_params()["det__loss"] == "izizf"


@pytest.mark.parametrize(
    "generator, expected",
    [
        ("progressive", dict(lr=1e-3, betas=(0.0, 0.99), batch=16, n_critic=1, drift=0.001, latent=512, kappa=0.1)),
        ("wgan-gp", dict(lr=1e-4, betas=(0.0, 0.9), batch=64, n_critic=5, drift=0.0, latent=128, kappa=1.0)),
    ],
)
def test_gan_settings_of_each_paper(generator, expected):
    det = FAnoGANDetector(generator=generator)
    det.image_shape_, det._seed = (64, 64), 0
    config = det._gan_config(n_samples=1000)
    assert (config["lr"], config["batch_size"], config["latent_dim"]) == (expected["lr"], expected["batch"], expected["latent"])
    assert det._setting("feature_weight") == expected["kappa"]
    net = _fanogan._make_gan_net(config, "cpu")
    assert (net.n_critic, net.drift_weight, net.gp_weight, net.loss) == (expected["n_critic"], expected["drift"], 10.0, "wgan-gp")
    assert net.get_params()["optimizer_g__betas"] == expected["betas"]
    if generator == "progressive":
        assert config["iterations"] == 536_000 and config["channels"] == (512, 512, 512, 512, 256)
        assert net.iterations_per_scale == (48_000, 96_000, 96_000, 96_000, 200_000)
        assert config["ema_decay"] == 0.999
    else:
        assert config["iterations"] == 7 * (1000 // 64) and config["channels"] == (512, 512, 256, 128, 64)
        assert net.augment == "hflip"


def test_training_records_both_stages_and_uses_the_papers_optimisers(fitted):
    assert set(fitted.histories_) == {"gan", "encoder"}
    assert fitted.n_iter_ == {"gan": len(fitted.histories_["gan"]), "encoder": 2}
    assert all("train_loss_d" in row for row in fitted.histories_["gan"])
    assert fitted.gan_.n_discriminator_steps_ == 12
    optimizer = fitted.encoder_.optimizer_
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert optimizer.param_groups[0]["lr"] == 1e-4
    # The encoder stage uses the GAN's own (frozen) objects.
    assert fitted.encoder_.generator_ is fitted._scoring_generator()
    assert fitted.encoder_.discriminator_ is fitted.gan_.discriminator_
    if fitted.generator == "progressive":
        assert fitted._scoring_generator() is fitted.gan_.generator_ema_
        assert int(fitted.gan_.generator_.scale) == 2 and float(fitted.gan_.generator_.alpha) == 0.0


@pytest.mark.parametrize("generator", ["progressive", "wgan-gp"])
def test_the_encoder_stage_leaves_the_gan_bit_identical(images, tmp_path, generator):
    memory = joblib.Memory(tmp_path, verbose=0)
    det = FAnoGANDetector(generator=generator, memory=memory, **TINY).fit(images)
    # The cached GAN is the GAN as stage 1 left it.
    cached = memory.cache(_fanogan._train_gan, ignore=["verbose"])(
        det._gan_config(len(images)), images, "cpu", [], 0
    )
    before = {**cached.generator_.state_dict(), **{"d." + k: v for k, v in cached.discriminator_.state_dict().items()}}
    after = {**det.gan_.generator_.state_dict(), **{"d." + k: v for k, v in det.gan_.discriminator_.state_dict().items()}}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("loss", ["izi", "ziz", "izif", "izizf"])
@pytest.mark.parametrize("encoder", ["critic", "resnet18"])
def test_every_loss_and_encoder_trains(images, loss, encoder):
    det = FAnoGANDetector(**{**TINY, "encoder": encoder, "loss": loss}).fit(images)
    losses = det.histories_["encoder"][:, "train_loss"]
    assert np.isfinite(losses).all()
    scores = det.score_samples(images)
    assert scores.shape == (24,) and np.isfinite(scores).all()


def test_scores_and_maps(fitted, images):
    assert fitted._resolved_score() == "izizf"
    izizf = fitted.score_samples(images)
    fitted.set_params(anomaly_score="residual")
    residual = fitted.score_samples(images)
    fitted.set_params(anomaly_score="izif")
    izif = fitted.score_samples(images)
    fitted.set_params(anomaly_score="auto")
    assert np.all(izizf < residual)  # izizf adds mean|z - z~| >= 0 to the residual
    assert not np.allclose(izif, residual)
    maps = fitted.anomaly_map(images)
    assert maps.shape == images.shape and np.nanmin(maps) >= 0
    np.testing.assert_allclose(np.nanmean(maps, axis=(1, 2)) * 2, -residual, rtol=1e-4)


def test_densenet_encoder_needs_32_pixels_and_scores(images):
    with pytest.raises(ValueError, match="at least 32x32"):
        FAnoGANDetector(**{**TINY, "encoder": "densenet169"}).fit(images)
    larger = make_chest_phantoms(8, image_size=32, anomaly_fraction=0.0, random_state=0).images
    det = FAnoGANDetector(**{**TINY, "encoder": "densenet169", "max_epochs": 1, "gan_channels": (4, 4, 4, 4)})
    assert det.fit(larger).score_samples(larger[:4]).shape == (4,)


def test_small_samples_are_padded_outside_the_roi(images):
    strips = images[:, 2:14, :]  # 12 x 16: padded to the GAN's 16 x 16
    det = FAnoGANDetector(**TINY).fit(strips)
    maps = det.anomaly_map(strips)
    assert maps.shape == strips.shape and np.isfinite(det.score_samples(strips)).all()


def test_bags_of_patches_and_stitched_maps():
    data = make_chest_phantoms(12, image_size=32, anomaly_fraction=0.0, random_state=0)
    pipe = make_pipeline(PatchExtractor(16), FAnoGANDetector(**TINY)).fit(data.images)
    bags = pipe[0].transform(data.images)
    assert pipe[-1].score_patches(bags).shape == bags.shape[:2]
    assert pipe.score_samples(data.images).shape == (12,)


def test_grid_over_losses_and_encoders_trains_the_gan_once_per_fold(monkeypatch, tmp_path):
    data = make_chest_phantoms(32, image_size=16, anomaly_fraction=0.25, random_state=0)
    fits = []
    original = GANNet.fit

    def counting_fit(self, *args, **kwargs):
        fits.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GANNet, "fit", counting_fit)
    cv = [(np.arange(16), np.arange(16, 32)), (np.arange(16, 32), np.arange(16))]
    grid = {"fanogandetector__loss": ["izi", "ziz", "izif", "izizf"], "fanogandetector__encoder": ["critic", "resnet18"]}

    def search(memory):
        pipe = make_imblearn_pipeline(NormalOnly(), FAnoGANDetector(**{**TINY, "max_epochs": 1}, memory=memory))
        return GridSearchCV(pipe, grid, scoring=get_scorer("roc_auc_anomaly"), cv=cv, refit=False).fit(
            data.images, data.labels
        )

    cached = search(str(tmp_path / "gan-cache"))
    assert len(fits) == 2  # 8 candidates, 2 folds: the GAN trains once per fold
    fits.clear()
    plain = search(None)
    assert len(fits) == 16
    np.testing.assert_array_equal(cached.cv_results_["mean_test_score"], plain.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(cached.cv_results_["split1_test_score"], plain.cv_results_["split1_test_score"])


@pytest.mark.parametrize("generator", ["progressive", "wgan-gp"])
def test_joblib_and_safe_file_round_trips(images, tmp_path, generator):
    det = FAnoGANDetector(generator=generator, **TINY).fit(images)
    expected = det.score_samples(images)
    joblib.dump(det, tmp_path / "det.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "det.joblib").score_samples(images), expected)
    save_model(det, tmp_path / "det.skan")
    loaded = load_model(tmp_path / "det.skan")
    np.testing.assert_array_equal(loaded.score_samples(images), expected)
    np.testing.assert_array_equal(loaded.anomaly_map(images), det.anomaly_map(images))
    assert loaded.encoder_.generator_ is loaded._scoring_generator()


def test_a_progressive_gan_stopped_early_is_refused(images):
    det = FAnoGANDetector(**TINY, gan_callbacks=[MaxIter(3)])
    with pytest.raises(RuntimeError, match="never reached full size"):
        det.fit(images)
    assert not hasattr(det, "gan_")


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(gan_channels=(8, 0)), "gan_channels"),
        (dict(gan_channels=(8,), generator="wgan-gp"), "gan_channels"),
        (dict(gan_channels=(8, 8)), "smaller than the 16x16"),
        (dict(encoder="vgg16"), "encoder"),
        (dict(loss="zz"), "loss"),
        (dict(gan_iterations=0), "gan_iterations"),
    ],
)
def test_bad_parameters_are_refused(images, params, match):
    with pytest.raises(ValueError, match=match):
        FAnoGANDetector(**{**TINY, **params}).fit(images)


def test_validation_fraction_holds_images_out_of_the_encoder_stage(images):
    det = FAnoGANDetector(**TINY, validation_fraction=0.25).fit(images)
    assert all("valid_loss" in row for row in det.histories_["encoder"])
    assert det.encoder_.train_split is None  # the held-out images are not kept
