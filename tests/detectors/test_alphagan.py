"""AlphaGANDetector (the hand X-ray paper's alpha-GAN): the four networks, the
reparameterisation the reference code gets wrong, minibatch discrimination in
training and scoring, the four groups' terms and the scores on fixed tensors, the
paper's settings, the schedule, persistence, grid search and a detection floor on
phantoms."""

import runpy
from pathlib import Path

import joblib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from imblearn.pipeline import make_pipeline as make_imblearn_pipeline
from sklearn.model_selection import GridSearchCV

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import AlphaGANDetector
from skanomaly.detectors.alphagan.losses import alphagan_score, fake_term, fooling_term, real_term
from skanomaly.detectors.alphagan.networks import (
    AlphaGANGenerator,
    CodeDiscriminator,
    ImageDiscriminator,
    MinibatchDiscrimination,
    VariationalEncoder,
)
from skanomaly.detectors.alphagan.training import AlphaGANNet
from skanomaly.io import load_model, save_model
from skanomaly.metrics import anomaly_roc_auc
from skanomaly.model_selection import NormalOnly, get_scorer
from skanomaly.training.adversarial import real_batch_statistics

EXAMPLE = Path(__file__).parents[2] / "examples" / "plot_alphagan_phantoms.py"
SMALL = dict(channels=(8, 16), latent_dim=8, minibatch_kernel_dims=8, max_epochs=2, batch_size=16, random_state=0)
GROUPS = ("encoder", "generator", "discriminator", "code_discriminator")


def _phantoms(n, size=16, fraction=0.0, seed=0):
    data = make_chest_phantoms(n, image_size=size, anomaly_fraction=fraction, random_state=seed)
    return np.where(data.masks, data.images, np.nan).astype(np.float32), data.labels


# ------------------------------------------------------------------------ networks
def test_the_papers_networks_at_128_px():
    """The code's sizes; D's minibatch tensor (1 GB) is checked on the meta device."""
    with torch.device("meta"):
        discriminator = ImageDiscriminator()
    assert tuple(discriminator.minibatch.T.shape) == (1024 * 16, 4 * 16, 256)
    assert discriminator.head.module.in_channels == 1024 + 4
    assert [m.out_features for m in CodeDiscriminator().modules() if isinstance(m, torch.nn.Linear)] == [50, 25, 1]
    torch.manual_seed(0)
    images = AlphaGANGenerator().eval()(torch.randn(2, 100))
    assert images.shape == (2, 1, 128, 128)
    mean, log_var = VariationalEncoder().eval()(images)
    assert mean.shape == log_var.shape == (2, 100) and mean.abs().max() < 1  # tanh on the mean only
    small = ImageDiscriminator(channels=(4, 8), minibatch_kernel_dims=3).eval()
    assert small(torch.zeros(3, 1, 16, 16)).shape == (3,)


def test_the_code_is_mean_plus_the_standard_deviation_times_noise():
    """Not the reference code's ``mean + log_var * eps``."""

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # an optimiser needs one

        def forward(self, x):
            return torch.full((len(x), 2), 0.5), torch.full((len(x), 2), np.log(4.0))  # variance 4, sd 2

    net = AlphaGANNet(Fixed, AlphaGANGenerator, ImageDiscriminator, CodeDiscriminator, latent_dim=2)
    net.initialize()
    eps = torch.tensor([[1.0, -0.5]])
    torch.testing.assert_close(net.encode(torch.zeros(1, 1, 4, 4), eps), torch.tensor([[2.5, -0.5]]))
    torch.testing.assert_close(net.encode(torch.zeros(1, 1, 4, 4)), torch.tensor([[0.5, 0.5]]))  # scoring: the mean


def test_minibatch_discrimination_in_training_and_scoring():
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(in_features=3, out_features=2, kernel_dims=4, reference_size=4)
    with torch.no_grad():
        layer.T.mul_(0.1)  # closeness away from 0, so that the features say something
    x = torch.randn(4, 3)
    m = torch.einsum("bi,iok->bok", x, layer.T)
    expected = torch.stack([
        torch.stack([sum(torch.exp(-(m[i, b] - m[j, b]).abs().sum()) for j in range(4) if j != i) for b in range(2)])
        for i in range(4)
    ])
    out = layer.train()(x)
    torch.testing.assert_close(out[:, :3], x)
    torch.testing.assert_close(out[:, 3:], expected)
    # Only real batches (under real_batch_statistics) become the reference.
    assert int(layer.reference_count) == 0
    assert torch.equal(layer.eval()(x)[:, 3:], torch.zeros(4, 2))
    with real_batch_statistics(layer):
        layer.train()(x)
    layer.train()(torch.randn(4, 3))  # a fake batch: not kept
    assert int(layer.reference_count) == 4 and torch.equal(layer.reference, x)
    layer.train()
    with real_batch_statistics(layer):
        layer(x[:2])  # an epoch's smaller last batch does not replace a full one
    assert int(layer.reference_count) == 4
    # Eval: an image's features come from the reference alone, not its companions.
    layer.eval()
    alone = layer(x[:1])
    with_others = layer(torch.cat([x[:1], 5 * torch.randn(7, 3)]))[:1]
    torch.testing.assert_close(alone, with_others)
    # A real image of the reference batch gets about what it had in training.
    torch.testing.assert_close(layer(x)[:, 3:].mean(), expected.mean(), rtol=0.5, atol=0)


# ------------------------------------------------------------------------ losses
def test_the_four_groups_terms_on_fixed_logits():
    logits = torch.tensor([2.0, -1.0, 0.0])
    p = torch.sigmoid(logits)
    torch.testing.assert_close(real_term(logits), -torch.log(p).mean())
    torch.testing.assert_close(fake_term(logits), -torch.log(1 - p).mean())
    # -log s + log(1 - s): Rosca et al.'s sum of both generator losses, = -logit.
    torch.testing.assert_close(fooling_term(logits), (-torch.log(p) + torch.log(1 - p)).mean())
    torch.testing.assert_close(fooling_term(logits), -logits.mean())


def test_table_1_scores_on_fixed_tensors():
    x = torch.zeros(2, 1, 2, 2)
    x_rec = torch.full((2, 1, 2, 2), 0.5)
    roi = torch.ones_like(x, dtype=torch.bool)
    d, c = torch.tensor([0.0, 3.0]), torch.tensor([1.0, -1.0])
    _, paper = alphagan_score("paper", x, x_rec, roi, d, c)
    torch.testing.assert_close(paper, ((1 - torch.sigmoid(d)) + (1 - torch.sigmoid(c))) / 2)
    torch.testing.assert_close(alphagan_score("discriminator", x, x_rec, roi, d, None)[1], 1 - torch.sigmoid(d))
    torch.testing.assert_close(alphagan_score("code", x, x_rec, roi, None, c)[1], 1 - torch.sigmoid(c))
    pixel, mse = alphagan_score("mse", x, x_rec, roi, None, None)
    torch.testing.assert_close(mse, torch.tensor([0.25, 0.25]))
    torch.testing.assert_close(pixel, x_rec.square())


# ---------------------------------------------------------------------- training
def test_defaults_are_the_papers():
    det = AlphaGANDetector()
    assert (det.lr, det.discriminator_lr, det.batch_size, det.max_epochs, det.latent_dim) == (1e-3, 5e-6, 16, 500, 100)
    assert det.channels == (64, 128, 256, 512, 1024) and det.attention and det.augment == "default"
    assert (det.minibatch_channels, det.minibatch_kernel_dims, det.reconstruction_weight) == (4, 256, 0.01)
    assert det.anomaly_score == "paper"
    net = AlphaGANDetector(**{**SMALL, "max_epochs": 1}).fit(_phantoms(8)[0]).net_
    for group, lr in zip(GROUPS, (1e-3, 1e-3, 5e-6, 5e-6)):
        optimizer = getattr(net, f"optimizer_{group}_")
        assert isinstance(optimizer, torch.optim.Adam)
        assert optimizer.param_groups[0]["betas"] == (0.5, 0.999) and optimizer.param_groups[0]["lr"] == lr
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
            id(p) for p in getattr(net, group + "_").parameters()}


def test_each_iteration_steps_e_g_d_c_in_turn_on_one_draw(monkeypatch):
    order, draws = [], []
    original = AlphaGANNet.loss_terms

    def recording(self, group, inputs, rng):
        terms = original(self, group, inputs, rng)
        if self.encoder_.training:
            order.append(group)
            draws.append((inputs["eps"].clone(), inputs["z"].clone()))
        return terms

    monkeypatch.setattr(AlphaGANNet, "loss_terms", recording)
    X, _ = _phantoms(32)
    det = AlphaGANDetector(**SMALL).fit(X)
    assert order == list(GROUPS) * 4
    assert det.net_.n_steps_ == dict.fromkeys(GROUPS, 4)
    for i in range(0, 16, 4):
        assert all(torch.equal(draws[i][k], draws[i + j][k]) for j in range(4) for k in range(2))
    assert not torch.equal(draws[0][0], draws[4][0])
    row = det.history_[-1]
    terms = ("reconstruction", "code_fooling", "reconstruction_fooling", "sample_fooling", "d_real",
             "d_reconstruction", "d_sample", "c_prior", "c_encoded")
    for key in [f"train_{t}" for t in terms] + ["train_loss", "train_loss_encoder", "train_loss_discriminator",
                                                "train_loss_code_discriminator"]:
        assert np.isfinite(row[key]), key
    # D's reference batch came from real training images.
    assert int(det.net_.discriminator_.minibatch.reference_count) == 16


def test_bad_scores_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"anomaly_score='mask' is not valid.*'paper', 'discriminator', 'code'"):
        AlphaGANDetector(anomaly_score="mask", **SMALL).fit(_phantoms(8)[0])


def _modules(det):
    return {name: getattr(det.net_, name + "_") for name in GROUPS}


def test_every_network_is_saved_and_restored_and_grid_search_runs_the_scores(tmp_path):
    X, _ = _phantoms(40, seed=1)
    test, labels = _phantoms(20, fraction=0.5, seed=2)
    X_all = np.concatenate([X, test])
    y_all = np.concatenate([np.zeros(40, dtype=int), labels])
    pipe = make_imblearn_pipeline(NormalOnly(), AlphaGANDetector(**SMALL))
    search = GridSearchCV(pipe, {"alphagandetector__anomaly_score": ["paper", "code", ("topk", 20)]},
                          scoring=get_scorer("roc_auc_anomaly"),
                          cv=[(np.arange(30), np.arange(30, 60))]).fit(X_all, y_all)
    assert len(search.cv_results_["params"]) == 3
    det = AlphaGANDetector(**SMALL).fit(X)
    assert set(det._torch_modules()) == {f"net_{g}" for g in GROUPS}
    expected = det.score_samples(test)
    save_model(det, tmp_path / "m.skan")
    joblib.dump(det, tmp_path / "m.joblib")
    for loaded in (load_model(tmp_path / "m.skan"), joblib.load(tmp_path / "m.joblib")):
        np.testing.assert_array_equal(loaded.score_samples(test), expected)
        np.testing.assert_array_equal(loaded.anomaly_map(test), det.anomaly_map(test))
        for name, module in _modules(loaded).items():
            for a, b in zip(module.state_dict().values(), _modules(det)[name].state_dict().values()):
                assert torch.equal(a.cpu(), b.cpu())


def test_detects_nodules_on_phantoms_above_a_measured_floor():
    """The gallery example plot_alphagan_phantoms.py: 16 px phantoms, 30 epochs with D and C at 2e-4 and the reconstruction at weight 1
    (at the paper's 5e-6 and 0.01 nothing is learned in a few epochs; about 45 s on one
    core). alpha-GAN barely detects, as the paper's 0.607 on hands: measured AUC of
    the paper's score 0.520 / 0.570 / 0.577 (random_state 0 / 1 / 2) on 200 test
    phantoms (standard error about 0.04); the floor sits two of them below the lowest,
    so it says only that the score is not inverted."""
    # The gallery example is this test's fit: the suite runs it once, here.
    plt.close("all")
    example = runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert plt.get_fignums(), "the example drew no figure"
    plt.close("all")
    auc = anomaly_roc_auc(example["test"].labels, example["detector"].score_samples(example["X_test"]))
    assert auc > 0.44, auc
