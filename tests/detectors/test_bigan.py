"""BiGANDetector (the hand X-ray paper's BiGAN): the self-attention networks, spectral
normalisation, the adversarial terms and Table 1's scores on fixed tensors, the
paper's settings, the schedule, persistence, grid search and a detection floor on
phantoms."""

import copy
import pickle

import runpy
from pathlib import Path

import joblib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from imblearn.pipeline import make_pipeline as make_imblearn_pipeline
from sklearn.model_selection import GridSearchCV
from torch import nn

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import BiGANDetector
from skanomaly.detectors.bigan.losses import bigan_score, discriminator_terms, generator_encoder_terms
from skanomaly.detectors.bigan.networks import BiGANEncoder, BiGANGenerator, JointDiscriminator
from skanomaly.io import load_model, save_model
from skanomaly.metrics import anomaly_roc_auc
from skanomaly.model_selection import NormalOnly, get_scorer
from skanomaly.nn.sagan import SAGANTrunk, SelfAttention, SpectralNorm

EXAMPLE = Path(__file__).parents[2] / "examples" / "plot_bigan_phantoms.py"
SMALL = dict(channels=(8, 16), latent_dim=8, max_epochs=2, batch_size=16, random_state=0)


def _phantoms(n, size=16, fraction=0.0, seed=0):
    data = make_chest_phantoms(n, image_size=size, anomaly_fraction=fraction, random_state=seed)
    return np.where(data.masks, data.images, np.nan).astype(np.float32), data.labels


# ------------------------------------------------------------------ shared parts
@pytest.mark.parametrize(
    "make_module",
    [lambda: nn.Conv2d(3, 5, 4), lambda: nn.ConvTranspose2d(5, 3, 4, 2, 1), lambda: nn.Linear(6, 4)],
    ids=["conv", "transposed", "linear"],
)
def test_spectral_norm_divides_by_the_largest_singular_value_and_copies(make_module):
    # Weights drawn here, after seeding: made at collection, they came from whatever
    # state the global generator was in, and the power iteration's convergence (the
    # gap between the two largest singular values) varied with the test order.
    torch.manual_seed(0)
    module = make_module()
    wrapped = SpectralNorm(module).train()
    x = torch.randn(2, 3, 8, 8) if isinstance(module, nn.Conv2d) else (
        torch.randn(2, 5, 8, 8) if isinstance(module, nn.ConvTranspose2d) else torch.randn(2, 6))
    for _ in range(100):  # power iterations, one per training pass
        out = wrapped(x)
    matrix = module.weight.detach().transpose(0, wrapped.dim).flatten(1)
    sigma = torch.linalg.matrix_norm(matrix, 2)
    torch.testing.assert_close(torch.dot(wrapped.u, matrix @ wrapped.v), sigma, rtol=1e-4, atol=0)
    expected = torch.func.functional_call(module, {"weight": module.weight / sigma}, (x,))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
    out.sum().backward()
    assert module.weight.grad is not None
    # Eval mode changes no estimate; pickling and deep copies (after training) work.
    wrapped.eval()
    u = wrapped.u.clone()
    wrapped(x)
    assert torch.equal(wrapped.u, u)
    for copied in (pickle.loads(pickle.dumps(wrapped)), copy.deepcopy(wrapped)):
        assert torch.equal(copied.eval()(x), wrapped(x))


def test_self_attention_starts_as_the_identity_and_mixes_positions():
    torch.manual_seed(0)
    layer = SelfAttention(16)
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(layer(x), x)
    with torch.no_grad():
        layer.gamma.fill_(1.0)
    changed = x.clone()
    changed[:, :, 0, 0] += 1.0  # one position changes every output position
    assert (layer(changed) - layer(x))[:, :, 3, 3].abs().sum() > 0
    assert SelfAttention(4).query.out_channels == 1  # channels // 8, at least one


def test_the_papers_networks_at_128_px():
    """The code's 128 px networks: widths 64 ... 1024, attention on the last two levels."""
    torch.manual_seed(0)
    generator, encoder, discriminator = BiGANGenerator(), BiGANEncoder(), JointDiscriminator()
    z = torch.randn(2, 100)
    with torch.no_grad():
        images = generator.eval()(z)
        assert images.shape == (2, 1, 128, 128) and images.abs().max() <= 1
        assert encoder.eval()(images).shape == (2, 100)
        assert discriminator.eval()(images, z).shape == (2,)
    attention = [m.value.in_channels for m in generator.modules() if isinstance(m, SelfAttention)]
    assert attention == [128, 64]
    assert [m.value.in_channels for m in encoder.modules() if isinstance(m, SelfAttention)] == [512, 1024]
    trunk_widths = [m.module.out_channels for m in encoder.trunk.modules() if isinstance(m, SpectralNorm)]
    assert trunk_widths == [64, 128, 256, 512, 1024]
    # D's z path is half the widest width (the code's 512) and its joint path all of it (1024).
    assert discriminator.z_path[0].module.out_channels == 512
    assert discriminator.joint[0].module.in_channels == 1024 + 512 and discriminator.joint[0].module.out_channels == 1024


@pytest.mark.parametrize("channels, side", [((4,), 8), ((4, 8), 16), ((4, 8, 8), 32)])
def test_the_networks_take_the_square_of_their_levels(channels, side):
    z = torch.randn(3, 5)
    images = BiGANGenerator(5, channels).eval()(z)
    assert images.shape == (3, 1, side, side)
    assert SAGANTrunk(channels)(images).shape == (3, channels[-1], 4, 4)
    assert JointDiscriminator(5, channels).eval()(images, z).shape == (3,)


# ------------------------------------------------------------------------ losses
def test_the_adversarial_terms_on_fixed_logits():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])

    def bce(logits, label):
        p = torch.sigmoid(logits)
        return -(label * torch.log(p) + (1 - label) * torch.log(1 - p)).mean()

    d = discriminator_terms(real, fake)
    torch.testing.assert_close(d["d_real"], bce(real, 1.0))
    torch.testing.assert_close(d["d_fake"], bce(fake, 0.0))
    ge = generator_encoder_terms(real, fake)  # the labels swapped
    torch.testing.assert_close(ge["generator"], bce(fake, 1.0))
    torch.testing.assert_close(ge["encoder"], bce(real, 0.0))
    hinge = discriminator_terms(real, fake, "hinge")
    torch.testing.assert_close(hinge["d_real"], torch.tensor((0.0 + 2.0) / 2))  # relu(1 - 2), relu(1 + 1)
    torch.testing.assert_close(hinge["d_fake"], torch.tensor((1.5 + 0.0) / 2))  # relu(1.5), relu(-2)
    hinge_ge = generator_encoder_terms(real, fake, "hinge")
    torch.testing.assert_close(hinge_ge["generator"], -fake.mean())
    torch.testing.assert_close(hinge_ge["encoder"], real.mean())


def test_table_1_scores_on_fixed_tensors():
    x = torch.zeros(2, 1, 2, 2)
    x_rec = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    roi = torch.ones_like(x, dtype=torch.bool)
    roi[0, 0, 1, 1] = False
    logits = torch.tensor([0.0, 2.0])
    pixel, image = bigan_score("discriminator", x, x_rec, roi, logits)
    torch.testing.assert_close(image, 1 - torch.sigmoid(logits))
    torch.testing.assert_close(pixel, x_rec.square())
    _, mse = bigan_score("mse", x, x_rec, roi, None)
    torch.testing.assert_close(mse, torch.tensor([(0.01 + 0.04 + 0.09) / 3, 0.25]))
    _, top = bigan_score(("topk", 2), x, x_rec, roi, None)
    torch.testing.assert_close(top, torch.tensor([(0.09 + 0.04) / 2, 0.5]))


# ---------------------------------------------------------------------- training
def test_defaults_are_the_papers():
    det = BiGANDetector()
    assert (det.lr, det.discriminator_lr, det.batch_size, det.max_epochs, det.latent_dim) == (1e-3, 5e-6, 16, 500, 100)
    assert det.channels == (64, 128, 256, 512, 1024) and det.attention and det.augment == "default"
    assert det.adversarial_loss == "bce" and det.anomaly_score == "discriminator"
    fitted = BiGANDetector(**{**SMALL, "max_epochs": 1}).fit(_phantoms(8)[0])
    net = fitted.net_
    for group, lr, networks in (("discriminator", 5e-6, (net.discriminator_,)),
                                ("generator_encoder", 1e-3, (net.generator_, net.encoder_))):
        optimizer = getattr(net, f"optimizer_{group}_")
        assert isinstance(optimizer, torch.optim.Adam)
        assert optimizer.param_groups[0]["betas"] == (0.5, 0.999) and optimizer.param_groups[0]["lr"] == lr
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
            id(p) for m in networks for p in m.parameters()}


def test_each_iteration_steps_d_then_g_and_e_on_the_same_latents(monkeypatch):
    from skanomaly.detectors.bigan.training import BiGANNet

    seen = []
    original = BiGANNet.pair_logits

    def recording(self, inputs, rng):
        seen.append(self.latents(inputs, rng).clone())
        return original(self, inputs, rng)

    monkeypatch.setattr(BiGANNet, "pair_logits", recording)
    X, _ = _phantoms(32)
    det = BiGANDetector(**SMALL).fit(X)
    assert det.net_.n_iterations_ == 4 and det.net_.n_steps_ == {"discriminator": 4, "generator_encoder": 4}
    # Two updates an iteration, on one draw of z; each iteration a new one.
    assert len(seen) == 8
    for first, second in zip(seen[::2], seen[1::2]):
        assert torch.equal(first, second)
    assert not torch.equal(seen[0], seen[2])
    row = det.history_[-1]
    for key in ("train_d_real", "train_d_fake", "train_loss_discriminator", "train_generator", "train_encoder",
                "train_loss"):
        assert np.isfinite(row[key]), key


def test_bad_scores_and_oversized_images_are_refused_with_the_fix():
    X, _ = _phantoms(8)
    with pytest.raises(ValueError, match=r"anomaly_score='paper' is not valid.*'discriminator'.*\('topk', k\)"):
        BiGANDetector(anomaly_score="paper", **SMALL).fit(X)
    with pytest.raises(ValueError, match="make networks for 16x16 images"):
        BiGANDetector(**SMALL).fit(_phantoms(8, size=32)[0])


def _modules(det):
    return {name: getattr(det.net_, name + "_") for name in ("generator", "encoder", "discriminator")}


def test_every_network_is_saved_and_restored_and_grid_search_runs_the_scores(tmp_path):
    X, _ = _phantoms(40, seed=1)
    test, labels = _phantoms(20, fraction=0.5, seed=2)
    X_all = np.concatenate([X, test])
    y_all = np.concatenate([np.zeros(40, dtype=int), labels])
    pipe = make_imblearn_pipeline(NormalOnly(), BiGANDetector(**SMALL))
    search = GridSearchCV(pipe, {"bigandetector__anomaly_score": ["discriminator", "mse", ("topk", 20)]},
                          scoring=get_scorer("roc_auc_anomaly"),
                          cv=[(np.arange(30), np.arange(30, 60))]).fit(X_all, y_all)
    assert len(search.cv_results_["params"]) == 3
    det = BiGANDetector(**SMALL).fit(X)
    assert set(det._torch_modules()) == {"net_generator", "net_encoder", "net_discriminator"}
    expected = det.score_samples(test)
    save_model(det, tmp_path / "m.skan")
    joblib.dump(det, tmp_path / "m.joblib")
    for loaded in (load_model(tmp_path / "m.skan"), joblib.load(tmp_path / "m.joblib")):
        np.testing.assert_array_equal(loaded.score_samples(test), expected)
        np.testing.assert_array_equal(loaded.anomaly_map(test), det.anomaly_map(test))
        for name, module in _modules(loaded).items():
            for a, b in zip(module.state_dict().values(), _modules(det)[name].state_dict().values()):
                assert torch.equal(a.cpu(), b.cpu())


def test_maps_are_squared_errors_nan_outside_the_roi():
    X, _ = _phantoms(24)
    det = BiGANDetector(**SMALL).fit(X)
    maps = det.anomaly_map(X[:4])
    assert np.array_equal(np.isnan(maps), np.isnan(X[:4]))
    assert np.nanmin(maps) >= 0 and np.nanmax(maps) <= 1
    # The "mse" score is the map's mean over the region of interest.
    det.set_params(anomaly_score="mse")
    np.testing.assert_allclose(-det.score_samples(X[:4]), np.nanmean(maps, axis=(1, 2)), rtol=1e-5)


def test_detects_nodules_on_phantoms_above_a_measured_floor():
    """The gallery example plot_bigan_phantoms.py: 16 px phantoms, 30 epochs with the discriminator at 2e-4 (at the paper's 5e-6 it
    learns nothing in a few epochs; about 25 s on one core). BiGAN barely detects, as
    the paper's 0.549 on hands: measured AUC of 1 - D(x, E(x)) 0.570 / 0.605 / 0.566
    (random_state 0 / 1 / 2) on 200 test phantoms, whose AUC has a standard error of
    about 0.04; the floor sits two of them below the lowest, so it says only that the
    score is not inverted."""
    # The gallery example is this test's fit: the suite runs it once, here.
    plt.close("all")
    example = runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert plt.get_fignums(), "the example drew no figure"
    plt.close("all")
    auc = anomaly_roc_auc(example["test"].labels, example["detector"].score_samples(example["X_test"]))
    assert auc > 0.49, auc
