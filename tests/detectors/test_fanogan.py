import joblib
import numpy as np
import pytest
import torch
from imblearn.pipeline import make_pipeline as make_imblearn_pipeline
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import FAnoGANDetector
from skanomaly.detectors.fanogan import detector as _fanogan
from skanomaly.io import load_model, save_model
from skanomaly.model_selection import NormalOnly, get_scorer
from skanomaly.detectors.fanogan.encoders import Encoder
from skanomaly.detectors.fanogan.networks import CriticEncoder
from skanomaly.preprocessing import CLAHE, PatchExtractor
from skanomaly.training.data import SampleSet
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
    # The encoder stage's "auto" settings are P-AnoGAN's (resolved in the test below).
    assert (det.lr, det.batch_size, det.max_epochs, det.encoder_optimizer) == ("auto", 64, "auto", "auto")
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
    config, training = det._network_config(), det._gan_training(n_samples=1000)
    assert (training["lr"], training["batch_size"]) == (expected["lr"], expected["batch"])
    assert config["latent_dim"] == expected["latent"]
    assert config["feature_weight"] == expected["kappa"] and config["side"] == 64
    net = _fanogan._make_gan_net(_fanogan._gan_network(config), "cpu", training)
    assert (net.n_critic, net.drift_weight, net.gp_weight, net.loss) == (expected["n_critic"], expected["drift"], 10.0, "wgan-gp")
    assert net.get_params()["optimizer_g__betas"] == expected["betas"]
    if generator == "progressive":
        assert training["iterations"] == 536_000 and config["channels"] == (512, 512, 512, 512, 256)
        assert net.iterations_per_scale == (48_000, 96_000, 96_000, 96_000, 200_000)
        assert config["ema_decay"] == 0.999
    else:
        assert training["iterations"] == 7 * (1000 // 64) and config["channels"] == (512, 512, 256, 128, 64)
        assert net.augment == "hflip" and config["ema_decay"] is None


def test_training_records_both_stages_and_uses_the_papers_optimisers(fitted):
    assert set(fitted.histories_) == {"gan", "encoder"}
    assert fitted.n_iter_ == {"gan": len(fitted.histories_["gan"]), "encoder": 2}
    assert all("train_loss_d" in row for row in fitted.histories_["gan"])
    assert fitted.gan_.n_discriminator_steps_ == 12
    optimizer = fitted.encoder_.optimizer_
    if fitted.generator == "progressive":  # P-AnoGAN
        assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["betas"] == (0.9, 0.999)
        assert optimizer.param_groups[0]["lr"] == 1e-4
    else:  # f-AnoGAN
        assert isinstance(optimizer, torch.optim.RMSprop) and optimizer.param_groups[0]["alpha"] == 0.9
        assert optimizer.param_groups[0]["lr"] == 5e-5
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
        _fanogan._gan_network(det.network_config_), det._gan_training(len(images)),
        SampleSet(images, side=det.network_config_["side"]), "cpu", [], 0,
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


# ---------------------------------------------------------------- encoder output
def test_critic_encoder_output_is_linear_by_default_and_tanh_on_request():
    """The f-AnoGAN code's encoder ends linear (Z_REG_TYPE=None): with an N(0, I) prior
    a tanh would cap every latent below 1 in magnitude."""
    x = torch.randn(3, 1, 8, 8)
    latents = {}
    for output in (None, "linear", "tanh"):
        kwargs = {} if output is None else {"output": output}
        encoder = CriticEncoder(latent_dim=2, channels=(4, 4), **kwargs)
        with torch.no_grad():
            encoder.output.weight.zero_()
            encoder.output.bias.copy_(torch.tensor([3.0, -2.5]))
            latents[output] = encoder(x)
    expected = torch.tensor([3.0, -2.5]).expand(3, 2)
    torch.testing.assert_close(latents[None], expected)
    torch.testing.assert_close(latents["linear"], expected)
    torch.testing.assert_close(latents["tanh"], torch.tanh(expected))
    assert latents["tanh"].abs().max() < 1
    # The detector's "critic" encoder is the linear one.
    assert Encoder("critic", latent_dim=2, channels=(4, 4)).network.output_activation == "linear"
    with pytest.raises(ValueError, match="output"):
        CriticEncoder(latent_dim=2, channels=(4, 4), output="relu")


# ------------------------------------------------- one call per paper's encoder stage
@pytest.mark.parametrize(
    "params, expected",
    [
        (
            {},  # P-AnoGAN
            dict(optimizer=torch.optim.Adam, lr=1e-4, kwargs={"betas": (0.9, 0.999)}, iterations=None, max_epochs=30,
                 loss="izizf", score="izizf", kappa=0.1),
        ),
        (
            dict(generator="wgan-gp", encoder="critic", loss="izif"),  # f-AnoGAN
            # TF1's RMSPropOptimizer defaults (decay 0.9), as the f-AnoGAN code uses it.
            dict(optimizer=torch.optim.RMSprop, lr=5e-5, kwargs={"alpha": 0.9}, iterations=50_000, max_epochs=50_000,
                 loss="izif", score="izif", kappa=1.0),
        ),
    ],
    ids=["p-anogan", "f-anogan"],
)
def test_one_call_resolves_each_papers_encoder_stage(params, expected):
    det = FAnoGANDetector(**params)
    assert (det.encoder_optimizer, det.lr, det.max_epochs, det.encoder_iterations) == ("auto",) * 4
    det.image_shape_, det._seed = (64, 64), 0
    config = det._network_config()
    settings = det._encoder_settings(config)
    assert settings["optimizer"] is expected["optimizer"]
    assert settings["lr"] == expected["lr"] and settings["batch_size"] == 64
    assert settings["optimizer_kwargs"] == expected["kwargs"]
    # The iteration budget ends training before max_epochs can (f-AnoGAN counts
    # iterations, one batch each); P-AnoGAN counts epochs.
    assert settings["iterations"] == expected["iterations"]
    assert settings["max_epochs"] == expected["max_epochs"]
    assert (config["loss"], det._resolved_score(), config["feature_weight"]) == (
        expected["loss"], expected["score"], expected["kappa"]
    )


def test_explicit_encoder_settings_override_auto():
    det = FAnoGANDetector(generator="wgan-gp", encoder_optimizer="adam", lr=1e-3, max_epochs=4, encoder_iterations=None)
    det.image_shape_, det._seed = (16, 16), 0
    settings = det._encoder_settings(det._network_config())
    assert (settings["optimizer"], settings["lr"], settings["max_epochs"], settings["iterations"]) == (
        torch.optim.Adam, 1e-3, 4, None
    )
    det = FAnoGANDetector(encoder_optimizer="rmsprop", encoder_iterations=7)
    det.image_shape_, det._seed = (16, 16), 0
    settings = det._encoder_settings(det._network_config())
    assert (settings["optimizer"], settings["lr"], settings["max_epochs"], settings["iterations"]) == (
        torch.optim.RMSprop, 1e-4, 30, 7
    )


@pytest.mark.parametrize("generator", ["progressive", "wgan-gp"])
def test_encoder_iterations_counts_training_batches(images, generator):
    # 24 images in batches of 4: 6 batches an epoch; 3 iterations end the first epoch
    # early. With wgan-gp, max_epochs="auto" leaves the iteration budget in charge.
    max_epochs = 5 if generator == "progressive" else "auto"
    det = FAnoGANDetector(
        **{**TINY, "batch_size": 4, "max_epochs": max_epochs}, generator=generator, encoder_iterations=3
    ).fit(images)
    history = det.histories_["encoder"]
    assert sum(history[:, "train_batch_count"]) == 3 and len(history) == 1
    assert np.isfinite(history[:, "train_loss"]).all()
    optimizer = det.encoder_.optimizer_
    if generator == "wgan-gp":
        assert isinstance(optimizer, torch.optim.RMSprop) and optimizer.param_groups[0]["lr"] == 5e-5
    else:
        assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 1e-4


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(generator="wgan-gp", encoder_iterations=None), "encoder_iterations=None.*max_epochs"),
        (dict(encoder_iterations=0), "encoder_iterations"),
        (dict(lr="fast"), "lr"),
        (dict(max_epochs=0), "max_epochs"),
        (dict(encoder_optimizer="sgd"), "encoder_optimizer"),
    ],
)
def test_bad_encoder_settings_are_refused(images, params, match):
    with pytest.raises(ValueError, match=match):
        FAnoGANDetector(**{**TINY, "max_epochs": "auto", **params}).fit(images)


# ---------------------------------------------- architecture parameters after fitting
@pytest.mark.parametrize("generator", ["progressive", "wgan-gp"])
def test_architecture_parameters_take_effect_at_the_next_fit(images, tmp_path, generator):
    det = FAnoGANDetector(generator=generator, **TINY).fit(images)
    scores, maps = det.score_samples(images), det.anomaly_map(images)
    other = "wgan-gp" if generator == "progressive" else "progressive"
    # Every architecture parameter changes; the fitted networks do not.
    det.set_params(generator=other, latent_dim=6, gan_channels=(8, 8, 8, 8), encoder="resnet18", loss="izi",
                   feature_weight=0.5, ema_decay=None)
    np.testing.assert_array_equal(det.score_samples(images), scores)
    np.testing.assert_array_equal(det.anomaly_map(images), maps)
    assert det._resolved_score() == "izizf"  # "auto" of the fitted loss, not of loss="izi"
    save_model(det, tmp_path / "det.skan")
    loaded = load_model(tmp_path / "det.skan")
    assert loaded.network_config_ == det.network_config_
    np.testing.assert_array_equal(loaded.score_samples(images), scores)
    np.testing.assert_array_equal(loaded.anomaly_map(images), maps)
    # The next fit builds what the parameters now say.
    refit = loaded.set_params(gan_iterations=4, gan_batch_size=8, max_epochs=1).fit(images)
    assert refit.network_config_["latent_dim"] == 6 and refit.network_config_["side"] == 32
    assert refit.score_samples(images).shape == (24,)


def test_module_shapes_leaves_a_fitted_detector_alone(fitted, images):
    before = dict(vars(fitted))
    scores = fitted.score_samples(images)
    shapes = fitted._module_shapes()
    assert set(shapes) == set(fitted._torch_modules())
    assert vars(fitted).keys() == before.keys()
    assert all(vars(fitted)[name] is value for name, value in before.items())
    np.testing.assert_array_equal(fitted.score_samples(images), scores)


def test_a_model_file_carries_no_local_cache_path(fitted, images, tmp_path):
    """memory= is a folder of this machine: the file stores None, and says so."""
    cache = tmp_path / "my-private-cache-folder"
    try:
        fitted.set_params(memory=str(cache))  # a parameter for the next fit only
        with pytest.warns(UserWarning, match="memory=.*is not saved"):
            save_model(fitted, tmp_path / "det.skan")
    finally:
        fitted.set_params(memory=None)
    assert b"my-private-cache-folder" not in (tmp_path / "det.skan").read_bytes()
    loaded = load_model(tmp_path / "det.skan")
    assert loaded.memory is None
    np.testing.assert_array_equal(loaded.score_samples(images[:4]), fitted.score_samples(images[:4]))


def test_a_joblib_round_trip_keeps_the_gan_shared_and_saves(fitted, images, tmp_path):
    """skorch pickles each net's modules apart: the encoder's frozen GAN must come back
    as the GAN stage's own modules, so the loaded detector saves like the fitted one."""
    joblib.dump(fitted, tmp_path / "det.joblib")
    loaded = joblib.load(tmp_path / "det.joblib")
    assert loaded.encoder_.discriminator_ is loaded.gan_.discriminator_
    assert loaded.encoder_.generator_ is loaded._scoring_generator()
    assert list(loaded._torch_modules()) == list(fitted._torch_modules())
    save_model(loaded, tmp_path / "det.skan")
    np.testing.assert_array_equal(load_model(tmp_path / "det.skan").score_samples(images), fitted.score_samples(images))
