"""HealthyGAN (Rahman Siddiquee et al., 2022): networks, the masked composition, the
focus loss and the terms on fixed tensors, the update schedule and learning-rate
decay, the two training sets through fit / NormalOnly / OneClassSplit, persistence,
and behaviour on phantoms with an unlabelled mixed pool."""

import joblib
import numpy as np
import pytest
import torch
from imblearn.pipeline import make_pipeline as make_imblearn_pipeline
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import HealthyGAN
from skanomaly.detectors.healthygan.losses import (
    critic_terms,
    focus_loss,
    generator_terms,
    healthygan_score,
    reconstruct,
    translate,
)
from skanomaly.detectors.healthygan.networks import HealthyGenerator, PatchCritic, auto_critic_layers
from skanomaly.io import load_model, save_model
from skanomaly.metrics import anomaly_roc_auc
from skanomaly.model_selection import NormalOnly, OneClassSplit, get_scorer
from skanomaly.training.stages import LinearLRDecay

SMALL = dict(generator_width=4, n_residual_blocks=1, critic_width=4, max_iter=4, batch_size=8, random_state=0)


def _two_sets(n_normal, n_mixed, size=16, seed=0, mixed_fraction=0.5):
    """Known-normal phantoms (y = 0) then a mixed pool (y = -1), and the pool's truth."""
    normal = make_chest_phantoms(n_normal, image_size=size, anomaly_fraction=0.0, random_state=seed)
    mixed = make_chest_phantoms(n_mixed, image_size=size, anomaly_fraction=mixed_fraction, random_state=seed + 1)
    X = np.concatenate([normal.images, mixed.images])
    y = np.r_[np.zeros(n_normal, dtype=int), -np.ones(n_mixed, dtype=int)]
    return X, y, mixed


# ------------------------------------------------------------------------ networks
def test_the_papers_generator_and_critic():
    generator = HealthyGenerator()
    convs = [m for m in generator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs[0].kernel_size == (7, 7) and convs[0].out_channels == 64
    assert [(m.kernel_size, m.stride, m.out_channels) for m in convs[1:3]] == [((4, 4), (2, 2), 128), ((4, 4), (2, 2), 256)]
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in convs) == 2
    assert len(convs) == 1 + 2 + 2 * 6 + 2 + 1  # six residual blocks of two convolutions
    assert convs[-1].kernel_size == (7, 7) and convs[-1].out_channels == 2  # image + mask
    assert all(m.bias is None for m in convs)  # InstanceNorm follows (the last: as the authors')
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and all(m.affine and not m.track_running_stats for m in norms)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    image, mask = generator(x)
    assert image.shape == x.shape and mask.shape == (2, 1, 32, 32)
    assert image.abs().max() <= 1 and mask.min() >= 0 and mask.max() <= 1

    critic = PatchCritic()
    assert [m.negative_slope for m in critic.modules() if isinstance(m, torch.nn.LeakyReLU)] == [0.01] * 6
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in critic.modules())
    assert critic.head.kernel_size == (3, 3) and critic.head.bias is None
    assert critic(torch.zeros(1, 1, 256, 256)).shape == (1, 1, 4, 4)
    # Six layers at 256 and 128 px (the paper's), one fewer per halving below.
    assert [auto_critic_layers(s) for s in (256, 128, 64, 32, 16, 8)] == [6, 6, 5, 4, 3, 2]


def test_a_score_does_not_depend_on_the_other_images_of_its_batch():
    X, y, mixed = _two_sets(16, 16)
    det = HealthyGAN(**SMALL).fit(X, y)
    together = det.score_samples(mixed.images[:6])
    alone = np.concatenate([det.score_samples(mixed.images[i : i + 1]) for i in range(6)])
    # InstanceNorm in every mode: each image is normalised by its own statistics.
    np.testing.assert_allclose(alone, together, rtol=det.__skanomaly_tags__().score_tolerance.rtol)


# -------------------------------------------------------------------------- losses
def test_the_masked_composition_on_fixed_tensors():
    x = torch.tensor([[[[0.5, -1.0], [0.0, 1.0]]]])
    healthy = torch.tensor([[[[0.0, 0.0], [1.0, -1.0]]]])
    mask = torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]])
    roi = torch.tensor([[[[True, True], [True, False]]]])
    # Eq. 1: m G + (1 - m) x; outside the ROI, x.
    torch.testing.assert_close(translate(x, healthy, mask, roi), torch.tensor([[[[0.0, -0.5], [0.0, 1.0]]]]))
    # Eq. 2: m x + (1 - m) G; outside the ROI, x.
    torch.testing.assert_close(reconstruct(x, healthy, mask, roi), torch.tensor([[[[0.5, -0.5], [1.0, 1.0]]]]))


def test_the_focus_loss_on_fixed_masks():
    roi = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    base = 1 / 0.51
    assert focus_loss(torch.zeros(2, 1, 2, 2), roi).item() == pytest.approx(0.0, abs=1e-6)
    # All ones: the size term (mean 1) squared; the 0 / 1 term is at its minimum.
    assert focus_loss(torch.ones(2, 1, 2, 2), roi).item() == pytest.approx(1.0, abs=1e-5)
    # All 0.5: the worst 0 / 1 term, 1 / 0.01 - 1 / 0.51.
    assert focus_loss(torch.full((2, 1, 2, 2), 0.5), roi).item() == pytest.approx(0.25 + 100 - base, rel=1e-6)
    # Pooled over the batch's ROI pixels, as the authors' code: a 1 in one of four pixels.
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, 0] = 1.0
    assert focus_loss(mask, roi[:1]).item() == pytest.approx(0.25**2, abs=1e-6)
    # Pixels outside the ROI count for nothing.
    partial = roi[:1].clone()
    partial[0, 0, 1] = False
    assert focus_loss(torch.full((1, 1, 2, 2), 0.5) * partial, partial).item() == pytest.approx(0.25 + 100 - base, rel=1e-6)
    assert focus_loss(torch.ones(2, 1, 2, 2), roi, size_weight=3.0, binary_weight=0.0).item() == pytest.approx(3.0)


def test_the_critic_and_generator_terms_on_fixed_tensors():
    terms = critic_terms(torch.tensor([1.0, 3.0]), torch.tensor([[0.5, -0.5], [2.0, 0.0]]))
    assert terms["critic_real"].item() == pytest.approx(-2.0)
    assert terms["critic_fake"].item() == pytest.approx(0.5)
    assert set(critic_terms(torch.tensor([1.0]), None)) == {"critic_real"}

    roi = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    x_b = torch.tensor([[[[0.0, 1.0], [0.5, -0.5]]]])
    normal = dict(x=x_b, roi=roi, healthy=torch.zeros_like(x_b), mask=torch.zeros_like(x_b),
                  critic=torch.tensor([[1.0, 3.0]]))
    x_a = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]])
    mask_a = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    unlabelled = dict(x=x_a, roi=roi, healthy=torch.full_like(x_a, -1.0), mask=mask_a, critic=torch.tensor([-1.0]))
    terms = generator_terms(normal, unlabelled)
    assert terms["adversarial_normal"].item() == pytest.approx(-2.0)
    assert terms["adversarial_unlabelled"].item() == pytest.approx(1.0)
    assert terms["identity"].item() == pytest.approx((0 + 1 + 0.5 + 0.5) / 4)  # |x_B - G(x_B)|, before the mask
    # m x + (1 - m) G: x where m = 1, G = -1 elsewhere: |1 - (-1)| on three pixels of four.
    assert terms["reconstruction"].item() == pytest.approx(3 * 2.0 / 4)
    assert terms["focus_normal"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["focus_unlabelled"].item() == pytest.approx(focus_loss(mask_a, roi).item())
    assert set(generator_terms(normal, None)) == {"adversarial_normal", "identity", "focus_normal"}


def test_the_score_is_the_change_in_pixel_units():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.tensor([0.4, -1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    mask = torch.tensor([0.25, 1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    roi = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    roi[1, 0, 0, 0] = False
    torch.testing.assert_close(healthygan_score("paper", x, x_hat, mask, roi), torch.tensor([0.2, 0.5]))
    torch.testing.assert_close(healthygan_score("mask", x, x_hat, mask, roi), torch.tensor([0.25, 1.0]))


# ------------------------------------------------------------------------ training
def test_defaults_are_the_papers():
    det = HealthyGAN()
    assert (det.generator_width, det.n_residual_blocks, det.critic_width, det.critic_layers) == (64, 6, 64, "auto")
    assert (det.gp_weight, det.identity_weight, det.reconstruction_weight, det.focus_weight) == (10, 1, 1, 0.1)
    assert (det.n_critic, det.lr, det.batch_size, det.max_iter) == (2, 1e-4, 16, 400_000)
    assert det._decay_iterations() == 100_000 and det.anomaly_score == "paper"
    X, y, _ = _two_sets(16, 16)
    fitted = HealthyGAN(**SMALL).fit(X, y)
    for group in ("critic", "generator"):
        optimizer = getattr(fitted.net_, f"optimizer_{group}_")
        assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["betas"] == (0.5, 0.999)
        assert optimizer.param_groups[0]["initial_lr"] == 1e-4


def test_the_critic_steps_every_iteration_and_the_generator_every_second():
    X, y, _ = _two_sets(16, 16)
    det = HealthyGAN(**{**SMALL, "max_iter": 6}).fit(X, y)
    steps = {
        group: max(int(s["step"]) for s in getattr(det.net_, f"optimizer_{group}_").state.values())
        for group in ("critic", "generator")
    }
    assert steps == {"critic": 6, "generator": 3}
    # n_iter_ counts epochs, as every detector's: six batches of 8 of 16 images.
    assert det.n_iter_ == 3 and (det.n_normal_, det.n_unlabelled_) == (16, 16)
    batches = [b for epoch in det.histories_["adversarial"] for b in epoch["batches"]]
    assert len(batches) == 6
    critic_terms_seen = {"train_critic_real", "train_critic_fake", "train_gradient_penalty", "train_loss_critic"}
    generator_terms_seen = {"train_adversarial_unlabelled", "train_adversarial_normal", "train_identity",
                            "train_reconstruction", "train_focus_unlabelled", "train_focus_normal", "train_loss"}
    assert all(critic_terms_seen <= set(b) for b in batches)
    assert [generator_terms_seen <= set(b) for b in batches] == [False, True] * 3


def test_the_learning_rate_falls_linearly_over_the_last_quarter():
    decay = LinearLRDecay(max_iter=8, decay_iter=2).initialize()
    assert [decay.factor(i) for i in range(8)] == [1, 1, 1, 1, 1, 1, 1, 0.5]
    decay = LinearLRDecay(max_iter=400_000, decay_iter=100_000).initialize()
    assert decay.factor(299_999) == 1 and decay.factor(300_001) == pytest.approx(1 - 1e-5)
    assert decay.factor(399_999) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="exceeds max_iter"):
        LinearLRDecay(max_iter=4, decay_iter=5).initialize()

    X, y, _ = _two_sets(16, 16)
    lrs = []

    from skorch.callbacks import Callback

    class RecordLR(Callback):
        def on_batch_begin(self, net, training=False, **kwargs):
            if training:
                lrs.append(net.optimizer_generator_.param_groups[0]["lr"])

    HealthyGAN(**{**SMALL, "max_iter": 8, "lr": 1e-3}, callbacks=[RecordLR()]).fit(X, y)
    # "auto": the last quarter (2 of 8); the decay callback runs before the spy.
    np.testing.assert_allclose(lrs, [1e-3] * 6 + [1e-3, 5e-4])
    det = HealthyGAN(**{**SMALL, "max_iter": 8, "lr_decay_iter": 9})
    with pytest.raises(ValueError, match="lr_decay_iter=9 exceeds max_iter=8"):
        det.fit(X, y)


def test_fit_needs_known_normal_and_unlabelled_images():
    X, y, _ = _two_sets(8, 8)
    with pytest.raises(ValueError, match="unlabelled mix of normal and abnormal images"):
        HealthyGAN(**SMALL).fit(X)
    with pytest.raises(ValueError, match="marks no image unlabelled"):
        HealthyGAN(**SMALL).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="marks no image known-normal"):
        HealthyGAN(**SMALL).fit(X, -np.ones(len(X)))
    labels = y.copy()
    labels[0] = 1
    with pytest.raises(ValueError, match=r"never trains on images marked abnormal \(1\)"):
        HealthyGAN(**SMALL).fit(X, labels)
    assert not hasattr(HealthyGAN(**SMALL), "net_")


def test_maps_are_nan_outside_the_roi_and_masks_in_zero_one():
    X, y, mixed = _two_sets(16, 16)
    X = np.where(np.concatenate([np.ones((16, 16, 16), bool), mixed.masks]), X, np.nan).astype(np.float32)
    det = HealthyGAN(**SMALL).fit(X, y)
    test = X[16:20]
    for maps in (det.anomaly_map(test), det.attention_map(test)):
        assert np.array_equal(np.isnan(maps), np.isnan(test))
        assert np.nanmin(maps) >= 0 and np.nanmax(maps) <= 1
    # "mask" scores by the mask's mean over the ROI (score_samples: higher is more normal).
    det.set_params(anomaly_score="mask")
    np.testing.assert_allclose(-det.score_samples(test), np.nanmean(det.attention_map(test).reshape(4, -1), axis=1),
                               rtol=1e-5)


def test_every_network_is_saved_and_restored(tmp_path):
    X, y, mixed = _two_sets(16, 16)
    det = HealthyGAN(**SMALL).fit(X, y)
    assert set(det._torch_modules()) == {"net_generator", "net_critic"}
    expected = det.score_samples(mixed.images)
    save_model(det, tmp_path / "m.skan")
    joblib.dump(det, tmp_path / "m.joblib")
    for loaded in (load_model(tmp_path / "m.skan"), joblib.load(tmp_path / "m.joblib")):
        np.testing.assert_array_equal(loaded.score_samples(mixed.images), expected)
        np.testing.assert_array_equal(loaded.attention_map(mixed.images), det.attention_map(mixed.images))
        assert (loaded.n_normal_, loaded.n_unlabelled_) == (16, 16)
        for name in ("generator_", "critic_"):
            for a, b in zip(getattr(loaded.net_, name).state_dict().values(),
                            getattr(det.net_, name).state_dict().values()):
                assert torch.equal(a.cpu(), b.cpu())


def test_grid_search_keeps_the_unlabelled_images_in_training_only():
    """The route of the docs: y is 0 (normal), 1 (abnormal, validation only) and -1
    (unlabelled, training only); NormalOnly drops the 1s from training, OneClassSplit
    keeps the -1s out of validation, the scorer sees ground truth."""
    X, y, _ = _two_sets(24, 24)
    test = make_chest_phantoms(24, image_size=16, anomaly_fraction=0.5, random_state=5)
    X_all = np.concatenate([X, test.images])
    y_all = np.r_[y, test.labels]
    groups = np.arange(len(y_all)) // 2
    seen = []

    class Recording(HealthyGAN):
        def fit(self, X, y=None):
            seen.append(np.unique(y).tolist())
            return super().fit(X, y)

    pipe = make_imblearn_pipeline(NormalOnly(), Recording(**SMALL))
    cv = OneClassSplit(StratifiedGroupKFold(n_splits=2))
    search = GridSearchCV(pipe, {"recording__anomaly_score": ["paper", "mask"]},
                          scoring=get_scorer("roc_auc_anomaly"), cv=cv, refit=False, error_score="raise")
    search.fit(X_all, y_all, groups=groups)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert seen and all(labels == [-1, 0] for labels in seen)
    for train, validation in cv.split(X_all, y_all, groups):
        assert set(np.flatnonzero(y_all == -1)) <= set(train)
        assert not np.any(y_all[validation] == -1) and set(y_all[validation]) == {0, 1}


# ---------------------------------------------------------------- on phantoms
@pytest.mark.xfail(
    strict=True,
    reason="Not met at any budget a CPU affords (issue 17 stays open): the masks saturate "
    "near 1 on normal and abnormal phantoms alike, so the score is at chance. Measured "
    "(generator/critic width 8, 2 residual blocks, 200 + 200 training phantoms, 200 test): "
    "32 px, 2,000 iterations: AUC 0.482 (lr 1e-4), 0.494 (5e-4), 0.485 (focus 1.0), mask "
    "in / outside nodules 0.99 / 0.98; 16 px, 6,000 iterations: AUC 0.452, mask 0.98 / "
    "0.91; 20,000: AUC 0.435, mask 0.99 / 0.93; with A = B the same (AUC 0.467 / 0.464, "
    "mask 0.98 / 0.89). The paper trains 400,000 iterations.",
)
def test_masks_concentrate_on_nodules_and_the_score_beats_a_floor():
    X, y, _ = _two_sets(200, 200, size=16)
    test = make_chest_phantoms(200, image_size=16, anomaly_fraction=0.5, random_state=7)
    det = HealthyGAN(generator_width=8, n_residual_blocks=2, critic_width=8, max_iter=400,
                     random_state=0).fit(X, y)
    masks = det.attention_map(test.images)
    rows, cols = np.mgrid[:16, :16]
    inside, outside = [], []
    for i in np.flatnonzero(test.labels == 1):
        (cx, cy), r = test.centers[i], test.radii[i]
        nodule = (cols - cx) ** 2 + (rows - cy) ** 2 <= r**2
        inside.append(np.nanmean(masks[i][nodule]))
        outside.append(np.nanmean(masks[i][~nodule]))
    assert np.mean(inside) > 2 * np.mean(outside), (np.mean(inside), np.mean(outside))
    assert anomaly_roc_auc(test.labels, det.score_samples(test.images)) > 0.6
